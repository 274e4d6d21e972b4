"""The sandbox worker: runs step programs, one disposable unit per program, and reports how each ended.

Protocol: one JSON request per line on stdin, one JSON reply per line on the original stdout.
A request carries the program's source; the program's process writes it into its own scratch,
writes `stdout.txt`, `stderr.txt` and `probe.bin` to a task directory only the worker can reach
afterwards, and the reply carries the probe bytes and the tails of the output files back.

Two layers of isolation:

* The worker, once: under bubblewrap it is PID 1 of the sandbox; at the `unshare` level it creates
  its own user, mount, network and PID namespaces, builds a minimal read-only root (`enter_root`:
  only the OS, the interpreter and the payload, secrets masked) and continues as PID 1 there.
* Each program, with `isolate`: its process is PID 1 of a PID namespace of its own, with its own
  user, mount and IPC namespaces, a fresh size-capped tmpfs as `/tmp` (its cwd and `HOME`) and
  `/dev/shm`, and its worker hidden from `/proc`. When it ends, the kernel kills everything it
  started (forks, threads of zombie leaders, daemons), and nothing it wrote outlives it. The
  namespaces are made in the pre-forked "spare" process, off the critical path.

How a program ended is reported by this worker, which the program cannot signal or reach: the
program's process writes one byte (`STARTED`) just before program code runs, so "the sandbox could
not start the program" (infrastructure) can never be forged by the program, and whatever happens
after it (exit codes, signals, a full scratch) is the program's own outcome.

Modes: `warm` imports the scientific stack once and forks one child per program (milliseconds);
`fresh` starts a new interpreter per program, exactly like `python program.py`.

Usage: python -m scicode.runtime.worker {warm|fresh} SCRATCH_DIR [CONFIG_JSON]
CONFIG_JSON: {"namespaces": bool, "root": {...} (see `enter_root`), "isolate": bool,
              "user": [uid, gid] (who to become when started as root, at the `unshare` level)}
"""

from __future__ import annotations

import base64
import contextlib
import ctypes
import json
import os
import resource
import select
import shutil
import signal
import socket
import sys
import time
import traceback
from typing import Any, NoReturn

PRELOAD = (
    "numpy",
    "scipy",
    "scipy.integrate",
    "scipy.linalg",
    "scipy.optimize",
    "scipy.special",
    "scipy.sparse",
    "scipy.sparse.linalg",
    "scipy.interpolate",
    "scipy.signal",
    "scipy.fft",
    "scipy.constants",
    "scipy.spatial",
    "scipy.stats",
    "sympy",
    "scicode.codec",
    "scicode.runtime.probe",
    "scicode.runtime.seccomp",
    "scicode.compare.cmp",
)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
CLONE_NEWIPC, CLONE_NEWUTS = 0x08000000, 0x04000000
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 4, 24, 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_NOATIME, MS_NODIRATIME, MS_BIND, MS_MOVE, MS_REMOUNT, MS_REC = 1024, 2048, 4096, 8192, 32, 16384
MS_PRIVATE, MS_RELATIME = 1 << 18, 1 << 21
MNT_DETACH = 2
_SYS_PIVOT_ROOT = {"x86_64": 155, "aarch64": 41}
POLL_SECONDS = 0.05
STARTED = b"S"
"""Written by the program's process just before program code runs (see the module docstring)."""
TAIL_BYTES = 16 * 1024
DEVICES = ("null", "zero", "full", "random", "urandom")
PROC_MASKS = ("sysrq-trigger", "keys", "key-users")
OPEN_FILES = 1024
"""A program's open-files limit (the usual default; the sandbox's own is far higher)."""
NPROC_MARGIN = 8
"""How far past `max_processes` the kernel lets a program fork (see `_set_limits`)."""

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> bool:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    return _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def _must_mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    if not _mount(source, target, fstype, flags, data):
        err = ctypes.get_errno()
        raise OSError(err, f"mount {source or fstype} on {target}: {os.strerror(err)}")


def _unshare_user(rest: int) -> bool:
    """Unshare a user namespace (mapping this uid and gid to themselves) plus `rest`."""
    uid, gid = os.getuid(), os.getgid()
    if _libc.unshare(CLONE_NEWUSER | rest) != 0:
        return False
    # A process that is not dumpable has its /proc files owned by root: an unprivileged caller
    # could not write its own maps. Nothing else can see this process while the maps are written.
    _prctl(PR_SET_DUMPABLE, 1)
    try:
        _write_file("/proc/self/setgroups", "deny")
        _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
        _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
    except OSError:
        return False
    finally:
        _prctl(PR_SET_DUMPABLE, 0)
    return True


# ---------------------------------------------------------------------------------------------
# Worker-level isolation (once)
# ---------------------------------------------------------------------------------------------


def new_namespaces(privileged: bool = False) -> bool:
    """Unshare user (when unprivileged namespaces work), mount, network, PID, UTS and IPC namespaces.

    `privileged` (real root, about to become an unprivileged user): no user namespace, so the
    root can be built with root's access to the host's paths. The caller's next child becomes
    PID 1 of the new PID namespace. Returns False when the kernel refuses.
    """
    rest = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID | CLONE_NEWUTS | CLONE_NEWIPC
    if privileged:
        return _libc.unshare(rest) == 0
    return _unshare_user(rest) or _libc.unshare(rest) == 0


def become(user: tuple[int, int]) -> None:
    """Become the unprivileged host user `user` (uid, gid): no groups, and with uid 0 gone, no capabilities.

    Run as root, the sandbox would otherwise map to the host's root, which owns kernel-wide
    settings and every root-owned file a mistake could expose.
    """
    uid, gid = user
    os.setgroups([])
    os.setresgid(gid, gid, gid)
    os.setresuid(uid, uid, uid)
    _prctl(PR_SET_DUMPABLE, 0)  # a change of credentials resets it


def _remount_read_only(path: str) -> None:
    """Make the mount at `path` read-only, keeping the flags a user namespace may not drop."""
    kept = os.statvfs(path).f_flag
    flags = MS_BIND | MS_REMOUNT | MS_RDONLY
    flags |= kept & (MS_NOSUID | MS_NODEV | MS_NOEXEC | MS_NOATIME | MS_NODIRATIME)
    flags |= MS_RELATIME if kept & os.ST_RELATIME else 0
    _must_mount(None, path, None, flags)


def _mounts_under(path: str) -> list[str]:
    """Mount points at or below `path` (from /proc/self/mountinfo), parents first."""
    out = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            point = line.split()[4].encode().decode("unicode_escape")  # \040 etc.
            if point == path or point.startswith(path.rstrip("/") + "/"):
                out.append(point)
    return sorted(set(out), key=len)


def _mount_point(source: str, dest: str) -> None:
    """Create `dest` as something `source` can be bound onto: a directory, or an empty file."""
    if os.path.isdir(source):
        os.makedirs(dest, exist_ok=True)
    else:
        os.makedirs(os.path.dirname(dest), exist_ok=True)
        if not os.path.exists(dest):
            open(dest, "wb").close()


def _bind_read_only(source: str, dest: str) -> None:
    _mount_point(source, dest)
    _must_mount(source, dest, None, MS_BIND | MS_REC)
    for point in _mounts_under(dest):
        _remount_read_only(point)


def _pivot_root(new_root: str) -> None:
    old = os.path.join(new_root, ".old-root")
    os.mkdir(old)
    number = _SYS_PIVOT_ROOT.get(os.uname().machine)
    if number is None or _libc.syscall(number, new_root.encode(), old.encode()) != 0:
        raise OSError(ctypes.get_errno(), f"pivot_root to {new_root} failed")
    os.chdir("/")
    _libc.umount2(b"/.old-root", MNT_DETACH)
    os.rmdir("/.old-root")


def enter_root(spec: dict[str, Any], base: str) -> None:
    """Replace this mount namespace's root with a minimal read-only one, built on `base`.

    `spec`: `binds` (paths shown read-only at the same place), `symlinks` ([target, path]),
    `masks` (paths hidden: a directory gets an empty read-only tmpfs, a file /dev/null) and
    `tmp_bytes` (the size of the writable `/tmp`). Nothing else of the host is reachable: not the
    home directory, the checkout of an editable install, caches, targets or site-packages' data.
    """
    _must_mount(None, "/", None, MS_REC | MS_PRIVATE)
    _must_mount("tmpfs", base, "tmpfs", MS_NOSUID | MS_NODEV, "size=1m,mode=0755")
    inside = lambda path: os.path.join(base, path.lstrip("/"))  # noqa: E731
    for target, path in spec.get("symlinks", []):
        os.symlink(target, inside(path))
    os.makedirs(inside("/tmp"))
    _must_mount("tmpfs", inside("/tmp"), "tmpfs", MS_NOSUID | MS_NODEV, f"size={int(spec['tmp_bytes'])},mode=1777")
    for path in sorted(spec.get("binds", []), key=lambda p: p.count("/")):
        _bind_read_only(path, inside(path))
    os.makedirs(inside("/dev/shm"))
    for name in DEVICES:
        _bind_read_only(f"/dev/{name}", inside(f"/dev/{name}"))
    for name, target in (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"), ("stdout", "/proc/self/fd/1")):
        os.symlink(target, inside(f"/dev/{name}"))
    os.symlink("/proc/self/fd/2", inside("/dev/stderr"))
    os.makedirs(inside("/proc"))
    _must_mount("proc", inside("/proc"), "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    _protect_proc(inside("/proc"))
    for path in spec.get("masks", []):
        _mask(inside(path))
    _pivot_root(base)
    _must_mount(None, "/", None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV)


def _mask(path: str) -> None:
    if os.path.isdir(path):
        _must_mount("none", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
    elif os.path.exists(path):
        _must_mount("/dev/null", path, None, MS_BIND)
        _remount_read_only(path)


def _protect_proc(proc: str) -> None:
    """Make kernel-wide settings read-only in the `/proc` at `proc`.

    A uid mapped to the host's root could otherwise write them (`kernel.core_pattern` runs a
    command as host root). The locked cover also stops a program mounting a `/proc` without it.
    Kernel keys (`/proc/keys`) are per host uid, so they are hidden too.
    """
    _bind_read_only(os.path.join(proc, "sys"), os.path.join(proc, "sys"))
    for name in PROC_MASKS:  # where the kernel has them
        _mask(os.path.join(proc, name))


def _become_namespace_init(config: dict[str, Any], base: str) -> None:
    """Enter new namespaces and continue as their PID 1 in a minimal root; the original process only waits.

    Started as root with `config["user"]`, both processes become that unprivileged user, the
    namespace's PID 1 once its root is built.
    """
    user = (int(config["user"][0]), int(config["user"][1])) if os.getuid() == 0 and config.get("user") else None
    if not new_namespaces(privileged=user is not None):
        raise SystemExit("scicode worker: the kernel refused new namespaces")
    pid = os.fork()
    if pid:
        if user:
            become(user)
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    enter_root(config["root"], base)
    if user:
        become(user)
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # a change of credentials clears it


# ---------------------------------------------------------------------------------------------
# Per-program isolation (in the spare, ahead of time, and in the program's process)
# ---------------------------------------------------------------------------------------------


def program_namespaces() -> bool:
    """New user, PID, mount, IPC and UTS namespaces for the caller's next child (the program)."""
    return _unshare_user(CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWIPC | CLONE_NEWUTS)


def _private_scratch(disk_bytes: int, worker_pids: tuple[int, ...]) -> str:
    """In the program's own namespaces: fresh tmpfs scratch, the worker out of sight; the cwd to use.

    `/tmp` becomes a fresh tmpfs holding only what the sandbox bound below it (an interpreter or
    payload under /tmp, still read-only), so the worker's scratch and earlier programs' files are
    gone. `/dev/shm` is a directory of the same tmpfs: one `disk_bytes` budget for both. A fresh
    `/proc` shows only the program's own processes; where the kernel refuses one (a `/proc` with
    locked overmounts) the entries of the worker's own processes (`worker_pids`: the worker and
    its zygote) are covered instead. They are not dumpable either way.
    """
    _must_mount(None, "/", None, MS_REC | MS_PRIVATE)
    if _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC):
        _protect_proc("/proc")
    else:
        for pid in worker_pids:
            if os.path.isdir(f"/proc/{pid}"):
                _must_mount("none", f"/proc/{pid}", "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC, "size=4k")
    keep = [p for p in _mounts_under("/tmp") if p != "/tmp"]
    stage = "/dev/shm"
    _must_mount("tmpfs", stage, "tmpfs", MS_NOSUID | MS_NODEV, f"size={disk_bytes},mode=1777")
    fresh, shm = os.path.join(stage, "tmp"), os.path.join(stage, "shm")
    for path in (fresh, shm):
        os.mkdir(path)
        os.chmod(path, 0o1777)
    for path in keep:
        dest = fresh + path[len("/tmp") :]
        _mount_point(path, dest)
        _must_mount(path, dest, None, MS_BIND | MS_REC)  # a bind keeps the source's read-only flag
    _must_mount(fresh, "/tmp", None, MS_BIND | MS_REC)
    _must_mount(shm, stage, None, MS_BIND)  # on top of the stage: only its `shm` directory shows
    return "/tmp"


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """No capability left, none to regain: the program cannot undo mounts or limits."""
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    for cap in range(64):
        _prctl(PR_CAPBSET_DROP, cap)
    header = _CapHeader(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (_CapData * 2)()
    _libc.capset(ctypes.byref(header), data)


def _set_limits(req: dict[str, Any], isolated: bool) -> None:
    cpu = int(req["timeout"]) + 2
    limits = {
        resource.RLIMIT_AS: req["memory_bytes"],
        resource.RLIMIT_FSIZE: req["output_bytes"],
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # soft first: SIGXCPU, then SIGKILL
        resource.RLIMIT_CORE: 0,
        # Each open socket or pipe can hold kernel buffers no address-space limit counts.
        resource.RLIMIT_NOFILE: OPEN_FILES,
    }
    if isolated and req.get("max_processes"):
        # The kernel counts processes per user namespace and uid: in the program's own namespace
        # this is its process count, refused at fork time. The worker's polling alone let a burst
        # of forks exhaust the host's PIDs before it looked. (Host root is exempt: see `become`.)
        # A few over the limit, so the worker still sees the program exceed it and ends it: a fork
        # bomb held exactly at the limit would spin on failing forks until its timeout.
        limits[resource.RLIMIT_NPROC] = int(req["max_processes"]) + NPROC_MARGIN
    for which, value in limits.items():
        soft, hard = value if isinstance(value, tuple) else (value, value)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (soft, hard))


def _prepare_program(
    task_dir: str, isolated: bool, disk_bytes: int, worker_pids: tuple[int, ...]
) -> tuple[list[int], str]:
    """Ahead of the request, in the program's process: its output files and its scratch (the cwd).

    The output files live in `task_dir`, which the worker reads afterwards; with namespaces it is
    out of the program's sight once the private scratch is mounted, and only these fds reach it.
    """
    os.setsid()
    outputs = [
        os.open(os.path.join(task_dir, name), os.O_WRONLY | os.O_CREAT | os.O_TRUNC | extra, 0o600)
        for name, extra in (("stdout.txt", 0), ("stderr.txt", 0), ("probe.bin", os.O_APPEND))
    ]
    workdir = _private_scratch(disk_bytes, worker_pids) if isolated else task_dir
    os.chdir(workdir)
    return outputs, workdir


def _task_main(req: dict[str, Any], mode: str, status_fd: int, prepared: tuple[list[int], str], isolated: bool) -> None:
    """In the program's process: the source, limits, no capabilities, then run. Never returns.

    Writes `STARTED` to `status_fd` just before program code runs. In `warm` mode it also writes
    the exit status there just before exiting, so the worker can collect the results without
    waiting for the kernel to tear down this (large, forked) address space.
    """
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # with namespaces: the helper that forked it is gone by now
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    outputs, workdir = prepared
    null = os.open(os.devnull, os.O_RDONLY)
    # surrogatepass: any str the trusted side sends becomes bytes; what they mean is the program's problem.
    with open("program.py", "w", encoding="utf-8", errors="surrogatepass") as f:
        f.write(req["source"])
    for src, dst in ((null, 0), (outputs[0], 1), (outputs[1], 2), (outputs[2], 3), (status_fd, 4)):
        os.dup2(src, dst)
    os.closerange(5, 65536)
    os.set_inheritable(3, True)
    os.set_inheritable(4, True)
    _drop_capabilities()
    if isolated:
        from scicode.runtime import seccomp

        seccomp.install()  # no new namespaces, mounts or kernel keys: see its docstring
    _set_limits(req, isolated)
    _prctl(PR_SET_DUMPABLE, 0)
    env = dict(req["env"], HOME=workdir, PWD=workdir)
    if mode == "fresh":
        env["SCICODE_PROBE_FD"], env["SCICODE_STATUS_FD"] = "3", "4"
        os.execve(sys.executable, [sys.executable, "-m", "scicode.runtime.probe"], env)  # noqa: S606
    os.environ.clear()
    os.environ.update(env)
    import atexit
    import io

    atexit._clear()  # the worker's own exit handlers are not the program's

    from scicode.runtime.probe import PROGRAM_NAME, run_program

    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    sys.argv = [PROGRAM_NAME]
    os.write(4, STARTED)
    code = run_program(PROGRAM_NAME, 3)
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110 - the exit status is already decided
        pass
    code = code if isinstance(code, int) and 0 <= code < 256 else 1
    if isolated:
        with contextlib.suppress(OSError):
            os.kill(-1, signal.SIGKILL)  # as PID 1 of its namespace: everything the program started
    with contextlib.suppress(OSError):
        os.write(4, bytes([code]))
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# Running one program (in the worker)
# ---------------------------------------------------------------------------------------------


def _descendants(prune: set[int] = frozenset(), hide: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """Every process below this worker (children, theirs, adopted orphans, zombie leaders too).

    The subtrees of `prune` are left out; `hide` processes are not listed but their children are.
    A zombie thread-group leader is listed (its threads may still run, and its children hang
    below it), so neither the process limit nor the kill can skip it.
    """
    me = os.getpid()
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as f:
                fields = f.read().rsplit(b")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[0] != b"X":
            parents[int(entry)] = int(fields[1])
    family: set[int] = {me}
    grown = True
    while grown:
        new = {p for p, parent in parents.items() if parent in family and p not in prune} - family
        family |= new
        grown = bool(new)
    return sorted(family - {me} - set(hide))


def _kill_until_gone(prune: set[int], hide: set[int]) -> None:
    """SIGKILL every descendant (but `prune`'s subtrees and `hide` themselves) until none is left."""
    for _ in range(500):
        _reap()
        victims = _descendants(prune, hide)
        if not victims:
            return
        _kill_all(victims)
        time.sleep(0.0005)


def _kill_all(pids: list[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


class Runner:
    """Runs programs one at a time, each in a process forked ahead of time (the "spare").

    With `isolate`, each program's process is PID 1 of namespaces of its own (see the module
    docstring); its death ends everything it started.
    """

    def __init__(self, mode: str, *, scratch: str = ".", isolate: bool = False, disk_bytes: int = 1 << 30) -> None:
        self.mode = mode
        self.scratch = os.path.abspath(scratch)
        self.isolate = isolate
        self.disk_bytes = disk_bytes
        self.spare: tuple[int | None, int, int, str] | None = None  # pid (None: setup failed), pipes, task dir
        self._count = 0
        self._zygote: tuple[int, socket.socket] | None = None  # see `start_zygote`
        self._worker_pids: tuple[int, ...] = (1, os.getpid())  # hidden from programs' /proc

    def start_zygote(self, close: tuple[int, ...] = ()) -> None:
        """From now on, fork every program's process from a process that never sees a request.

        Freed memory keeps its old bytes: a process that has answered requests still holds
        earlier programs' sources and outputs, and a program forked from it could read them in
        its own copy. The zygote is forked before the first request and only ever receives
        pipe ends and a directory name. `close`: the worker's protocol fds, which it must not hold.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        pid = os.fork()
        if pid == 0:
            ours.close()
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
            null = os.open(os.devnull, os.O_RDONLY)
            os.dup2(null, 0)  # stdin carries requests
            for fd in (null, *close):
                os.close(fd)
            self._serve_zygote(theirs)
        theirs.close()
        self._zygote = (pid, ours)

    def _serve_zygote(self, sock: socket.socket) -> NoReturn:
        """In the zygote: fork one program's process per message (pipe ends + task dir); answer its pid."""
        self._worker_pids = (*self._worker_pids, os.getpid())
        try:
            while True:
                message, fds, _, _ = socket.recv_fds(sock, 4096, 2)
                if not message or len(fds) != 2:
                    break
                pid = self._fork_program(fds[0], fds[1], message.decode(), others=())
                for fd in fds:
                    os.close(fd)
                sock.send(str(pid).encode() if pid is not None else b"-")
        finally:
            os._exit(0)

    def prepare(self) -> None:
        """Fork the next program's process, with its namespaces, scratch and output files, while nothing waits."""
        if self.spare is not None:
            return
        self._count += 1
        task_dir = os.path.join(self.scratch, f"task-{self._count}")
        shutil.rmtree(task_dir, ignore_errors=True)
        os.mkdir(task_dir, 0o700)
        req_r, req_w = os.pipe()
        status_r, status_w = os.pipe()
        try:
            if self._zygote is None:
                pid = self._fork_program(req_r, status_w, task_dir, others=(req_w, status_r))
            else:
                pid = self._ask_zygote(req_r, status_w, task_dir)
        finally:
            os.close(req_r)
            os.close(status_w)
        self.spare = (pid, req_w, status_r, task_dir)

    def _ask_zygote(self, req_r: int, status_w: int, task_dir: str) -> int | None:
        assert self._zygote is not None
        socket.send_fds(self._zygote[1], [task_dir.encode()], [req_r, status_w])
        answer = self._zygote[1].recv(64)
        if not answer:
            raise RuntimeError("the worker's zygote died")
        return None if answer == b"-" else int(answer)

    def _fork_program(self, req_r: int, status_w: int, task_dir: str, others: tuple[int, ...]) -> int | None:
        """Fork the program's process through a helper (which makes the namespaces, with `isolate`).

        The helper exits at once, so the program's process becomes the child of the worker, a
        child subreaper, wherever the fork happened (here or in the zygote). None: the kernel
        refused the namespaces.
        """
        pid_r, pid_w = os.pipe()
        helper = os.fork()
        if helper == 0:
            try:
                os.close(pid_r)
                for fd in others:
                    os.close(fd)
                if not self.isolate or program_namespaces():
                    init = os.fork()
                    if init == 0:
                        os.close(pid_w)
                        self._program_process(req_r, status_w, task_dir)
                    os.write(pid_w, str(init).encode())
            finally:
                os._exit(0)
        os.close(pid_w)
        with os.fdopen(pid_r, "rb") as f:
            data = f.read()
        os.waitpid(helper, 0)
        return int(data) if data else None

    def _program_process(self, req_r: int, status_w: int, task_dir: str) -> NoReturn:
        try:
            prepared = _prepare_program(task_dir, self.isolate, self.disk_bytes, self._worker_pids)
            with os.fdopen(req_r, "rb") as f:
                line = f.readline()
            if line:
                _task_main(json.loads(line), self.mode, status_w, prepared, self.isolate)
        except BaseException:  # noqa: BLE001 - setup failed: say why (stderr.txt, or the worker's log)
            traceback.print_exc()
        finally:
            os._exit(1)  # never reached once the program started; before that, no STARTED: setup failed

    def discard(self) -> None:
        """Drop the spare (the worker is shutting down)."""
        if self.spare is not None:
            pid, req_w, status_r, task_dir = self.spare
            os.close(req_w)
            os.close(status_r)
            if pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            shutil.rmtree(task_dir, ignore_errors=True)
            self.spare = None
        if self._zygote is not None:
            self._zygote[1].close()  # it exits when its socket closes
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._zygote[0], 0)
            self._zygote = None

    def _protected(self) -> set[int]:
        """Processes of the worker itself below it: never counted or killed as the program's."""
        return {self._zygote[0]} if self._zygote else set()

    def _clean(self) -> None:
        """Before a program: nothing left of the previous one (reaped; without namespaces, every descendant killed)."""
        if self.isolate:
            _reap()
        else:
            spare = {self.spare[0]} if self.spare and self.spare[0] else set()
            _kill_until_gone(spare | self._protected(), set())

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run one program (`req["source"]`) under the timeout and the process limit; the reply dict.

        Its task directory (output files) is read into the reply and removed.
        """
        self._clean()
        self.prepare()
        assert self.spare is not None
        pid, req_w, status_r, task_dir = self.spare
        self.spare = None
        try:
            reply = self._run(pid, req_w, status_r, req)
            reply.update(_collect(task_dir, int(req["output_bytes"])))
        finally:
            shutil.rmtree(task_dir, ignore_errors=True)
        if reply.get("setup_failed"):
            reply["error"] = f"{reply.get('error', '')}\n{reply.get('stderr', '')[-2000:]}".strip()
        return reply

    def _run(self, pid: int | None, req_w: int, status_r: int, req: dict[str, Any]) -> dict[str, Any]:
        if pid is None:
            os.close(req_w)
            os.close(status_r)
            return {"id": req["id"], "setup_failed": True, "error": "the kernel refused the program's namespaces"}
        start = time.monotonic()
        with os.fdopen(req_w, "wb") as f:
            f.write(json.dumps(req).encode() + b"\n")
        pidfd = os.pidfd_open(pid)
        try:
            killed_for, started, status = self._watch(
                pidfd, status_r, start + float(req["timeout"]), int(req.get("max_processes", 0))
            )
        finally:
            os.close(pidfd)
            os.close(status_r)
        if killed_for or (self.isolate and status is not None):
            # The program's process; with namespaces, the kernel then ends everything it started.
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill()
        if status is None:
            _, wait_status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(wait_status)
        else:
            code = status  # reaped before the next program: its address space is torn down meanwhile
        if not self.isolate:
            # Whatever the program left running dies before its outputs are read. The program's own
            # process is not waited for when it reported its status: its teardown overlaps the reply.
            _kill_until_gone(self._protected(), {pid} if status is not None else set())
        reply: dict[str, Any] = {
            "id": req["id"],
            "timed_out": killed_for == "timeout",
            "seconds": time.monotonic() - start,
            "killed_for": killed_for if killed_for != "timeout" else None,
        }
        if not started and not killed_for:
            reply.update(setup_failed=True, error=f"the program's process ended before the program started ({code})")
        elif code < 0:
            reply["signal"] = -code
        else:
            reply["returncode"] = code
        return reply

    def _watch(
        self, pidfd: int, status_r: int, deadline: float, max_processes: int
    ) -> tuple[str | None, bool, int | None]:
        """(kill reason, whether the program started, exit status it reported) once it ends or must be killed."""
        received = b""
        watched = [pidfd, status_r]
        while True:
            remaining = deadline - time.monotonic()
            started = received[:1] == STARTED
            if remaining <= 0:
                return "timeout", started, None
            ready = select.select(watched, [], [], min(remaining, POLL_SECONDS))[0]
            if status_r in ready:
                data = os.read(status_r, 2 - len(received))
                received += data
                if len(received) == 2 and received[:1] == STARTED:
                    return None, True, received[1]
                if not data or len(received) == 2:
                    watched = [pidfd]  # closed (fresh mode closes it once started): wait for the exit itself
            if pidfd in ready:
                return None, received[:1] == STARTED, None
            if max_processes and len(_descendants(self._protected())) > max_processes:
                return "processes", started, None


def run_in_dir(runner: Runner, req: dict[str, Any], task_dir: str) -> dict[str, Any]:
    """Run `req["source"]` with `runner` (whose scratch is `task_dir`); `task_dir` is removed afterwards."""
    try:
        return runner.run(req)
    finally:
        runner.discard()
        shutil.rmtree(task_dir, ignore_errors=True)


def _collect(task_dir: str, limit: int) -> dict[str, Any]:
    """Outputs of a finished program: probe bytes (base64), output tails, file sizes."""
    out: dict[str, Any] = {"sizes": {}}
    for name in ("stdout.txt", "stderr.txt", "probe.bin"):
        path = os.path.join(task_dir, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        out["sizes"][name] = size
        data = b""
        if size and (name != "probe.bin" or size < limit):
            with open(path, "rb") as f:
                if name != "probe.bin":
                    f.seek(max(0, size - TAIL_BYTES))
                data = f.read(limit)
        if name == "probe.bin":
            out["probe"] = base64.b64encode(data).decode()
        else:
            out[name.split(".")[0]] = data.decode("utf-8", errors="replace")
    return out


def _serve(runner: Runner, line: str, replies: Any) -> None:
    """Answer one request (programs are forked by the zygote, which never sees it)."""
    if not line.strip():
        return
    req = json.loads(line)
    try:
        reply = runner.run(req)
    except Exception as e:  # noqa: BLE001 - reported as an infrastructure failure
        reply = {"id": req.get("id"), "setup_failed": True, "error": f"{type(e).__name__}: {e}"}
    replies.write(json.dumps(reply) + "\n")


def main() -> None:
    """Set up isolation, preload, then serve requests until stdin closes."""
    _prctl(PR_SET_DUMPABLE, 0)  # no program may read this process's memory (it ran other programs)
    mode = sys.argv[1] if len(sys.argv) > 1 else "warm"
    config = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    # Workers may share a scratch root (the `none` level): each works in its own directory.
    root = sys.argv[2] if len(sys.argv) > 2 else "/tmp/scicode-tasks"
    own = os.path.join(root, f"worker-{os.getpid()}-{time.time_ns()}")
    os.makedirs(own, mode=0o700, exist_ok=True)
    if config.get("namespaces"):
        _become_namespace_init(config, own)  # `own` becomes the new root; scratch moves to its /tmp
        own = f"/tmp/scicode-tasks/worker-{time.time_ns()}"
        os.makedirs(own, mode=0o700)
    os.chdir(own)
    reply_fd = os.dup(1)
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, 1)  # nothing the worker imports may write into the protocol channel
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    if mode == "warm":
        import importlib

        os.environ.setdefault("MPLBACKEND", "Agg")
        for name in PRELOAD:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001, S112 - a missing optional module only costs time later
                continue
    import gc

    gc.freeze()  # fewer copy-on-write faults in forked children
    runner = Runner(
        mode, scratch=own, isolate=bool(config.get("isolate")), disk_bytes=int(config.get("disk_bytes", 1 << 30))
    )
    runner.start_zygote(close=(reply_fd,))
    runner.prepare()
    replies = os.fdopen(reply_fd, "w", buffering=1)
    replies.write(json.dumps({"ready": True, "pid": os.getpid(), "mode": mode, "isolate": runner.isolate}) + "\n")
    for line in sys.stdin:
        _serve(runner, line, replies)
        try:
            runner.prepare()  # the next program's process, forked while the host reads this reply
        except OSError:  # e.g. the host is out of processes for a moment: `run` tries again, and says so
            traceback.print_exc()
    runner.discard()


if __name__ == "__main__":
    main()

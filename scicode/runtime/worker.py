"""The sandbox worker: runs step programs, one child process per program, and reports how each ended.

Protocol: one JSON request per line on stdin, one JSON reply per line on the original stdout.
A request carries the program's source; the worker writes it to a fresh task directory under its
scratch root (a size-limited tmpfs under bubblewrap), the child writes `stdout.txt`, `stderr.txt`
and `probe.bin` there, and the reply carries the probe bytes and the tails of the output files
back, so the sandbox never needs a directory the host can see.

Isolation is set up once per worker, not per program: under bubblewrap the worker is PID 1 of
the sandbox; with `--namespaces` it creates its own user, mount, network and PID namespaces (and
hides the given paths) and continues as PID 1 of them. Either way every process a program starts
stays a descendant of the worker (PID 1, or a child subreaper at level `none`), which enforces the
wall-clock timeout and the process limit and kills every descendant after each program. A program
cannot signal PID 1 from inside its namespace, and it runs without capabilities.

Modes: `warm` imports the scientific stack once and forks one child per program (milliseconds);
`fresh` starts a new interpreter per program, exactly like `python program.py`.

Usage: python -m scicode.runtime.worker {warm|fresh} SCRATCH_DIR [CONFIG_JSON]
CONFIG_JSON: {"namespaces": bool, "masks": [paths to hide], "read_only": [paths]}
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
import sys
import time
from typing import Any

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
    "scicode.compare.cmp",
)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_BIND, MS_REMOUNT, MS_REC, MS_PRIVATE = 4096, 32, 16384, 1 << 18
POLL_SECONDS = 0.05
TASK_EXIT_SETUP_FAILED = 97
TAIL_BYTES = 16 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# Worker-level isolation (once)
# ---------------------------------------------------------------------------------------------


def new_namespaces() -> bool:
    """Unshare user (when unprivileged namespaces work), mount, network and PID namespaces.

    The caller's next child becomes PID 1 of the new PID namespace. Returns False when the kernel
    refuses.
    """
    uid, gid = os.getuid(), os.getgid()
    rest = CLONE_NEWNS | CLONE_NEWNET | CLONE_NEWPID
    if _libc.unshare(CLONE_NEWUSER | rest) == 0:
        try:
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError:
            pass
        return True
    return _libc.unshare(rest) == 0


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> bool:
    enc = lambda s: s.encode() if s is not None else None  # noqa: E731
    return _libc.mount(enc(source), enc(target), enc(fstype), flags, enc(data)) == 0


def apply_masks(masks: list[str], read_only: list[str]) -> None:
    """Set up this (private) mount namespace: a fresh /proc, paths hidden or made read-only.

    A hidden directory gets an empty read-only tmpfs over it, a hidden file /dev/null.
    """
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
    for path in read_only:
        if os.path.exists(path) and _mount(path, path, None, MS_BIND | MS_REC):
            _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)
    for path in masks:
        if os.path.isdir(path):
            _mount("none", path, "tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, "size=4k")
        elif os.path.exists(path) and _mount("/dev/null", path, None, MS_BIND):
            _mount(None, path, None, MS_BIND | MS_REMOUNT | MS_RDONLY)


def _become_namespace_init(config: dict[str, Any]) -> None:
    """Enter new namespaces and continue as their PID 1; the original process only waits."""
    if not new_namespaces():
        raise SystemExit("scicode worker: the kernel refused new namespaces")
    pid = os.fork()
    if pid:
        signal.signal(signal.SIGTERM, lambda *_: os.kill(pid, signal.SIGKILL))
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF)
    apply_masks(config.get("masks") or [], config.get("read_only") or [])


# ---------------------------------------------------------------------------------------------
# Per-program setup (in the child)
# ---------------------------------------------------------------------------------------------


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


def _set_limits(req: dict[str, Any]) -> None:
    cpu = int(req["timeout"]) + 2
    limits = {
        resource.RLIMIT_AS: req["memory_bytes"],
        resource.RLIMIT_FSIZE: req["output_bytes"],
        resource.RLIMIT_CPU: (cpu, cpu + 1),  # soft first: SIGXCPU, then SIGKILL
        resource.RLIMIT_CORE: 0,
    }
    for which, value in limits.items():
        soft, hard = value if isinstance(value, tuple) else (value, value)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(which, (soft, hard))


def _task_main(req: dict[str, Any], mode: str, status_fd: int) -> None:
    """In the program's process: session, files, limits, no capabilities, then run. Never returns.

    Just before exiting it writes its exit status to `status_fd`, so the worker can collect the
    results without waiting for the kernel to tear down this (large, forked) address space.
    """
    os.setsid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    os.chdir(req["dir"])
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    probe = os.open("probe.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    for src, dst in ((null, 0), (out, 1), (err, 2), (probe, 3), (status_fd, 4)):
        os.dup2(src, dst)
    os.closerange(5, 65536)
    os.set_inheritable(3, True)
    _drop_capabilities()
    _set_limits(req)
    env = dict(req["env"], HOME=req["dir"], PWD=req["dir"])
    if mode == "fresh":
        env["SCICODE_PROBE_FD"] = "3"
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
    code = run_program(PROGRAM_NAME, 3)
    try:
        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110 - the exit status is already decided
        pass
    code = code if isinstance(code, int) and 0 <= code < 256 else 1
    with contextlib.suppress(OSError):
        os.write(4, bytes([code]))
    os._exit(code)


# ---------------------------------------------------------------------------------------------
# Running one program (in the worker)
# ---------------------------------------------------------------------------------------------


def _descendants(prune: set[int] = frozenset(), hide: set[int] = frozenset()) -> list[int]:  # type: ignore[assignment]
    """Every live process below this worker (children, theirs, adopted orphans).

    The subtrees of `prune` are left out; `hide` processes are not listed but their children are.
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
        if fields[0] not in (b"Z", b"X"):
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
    """Runs programs one at a time, each in a child forked ahead of time (the "spare")."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.spare: tuple[int, int, int] | None = None  # pid, request pipe, status pipe

    def prepare(self) -> None:
        """Fork the next program's process now, while nothing waits for it."""
        if self.spare is not None:
            return
        req_r, req_w = os.pipe()
        status_r, status_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)  # never outlive the worker, even while waiting
            os.close(req_w)
            os.close(status_r)
            try:
                with os.fdopen(req_r, "rb") as f:
                    line = f.readline()
                if line:
                    _task_main(json.loads(line), self.mode, status_w)
            finally:
                os._exit(TASK_EXIT_SETUP_FAILED)
        os.close(req_r)
        os.close(status_w)
        self.spare = (pid, req_w, status_r)

    def _clean(self) -> None:
        """Before a program: nothing left of the previous one (reaped, every descendant killed)."""
        _kill_until_gone({self.spare[0]} if self.spare else set(), set())

    def run(self, req: dict[str, Any]) -> dict[str, Any]:
        """Run one program (its directory exists) under the timeout and the process limit."""
        self._clean()
        self.prepare()
        assert self.spare is not None
        pid, req_w, status_r = self.spare
        self.spare = None
        start = time.monotonic()
        with os.fdopen(req_w, "wb") as f:
            f.write(json.dumps(req).encode() + b"\n")
        pidfd = os.pidfd_open(pid)
        spare: set[int] = set()  # the next spare is forked after the reply, off the critical path
        try:
            killed_for, status = self._watch(
                pidfd, status_r, start + float(req["timeout"]), int(req.get("max_processes", 0)), spare
            )
        finally:
            os.close(pidfd)
            os.close(status_r)
        if killed_for:
            for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    kill()
        if status is None:
            _, wait_status = os.waitpid(pid, 0)
            code = os.waitstatus_to_exitcode(wait_status)
        else:
            code = status  # reaped before the next program: its address space is torn down meanwhile
        # Whatever the program left running dies before its outputs are read. The program's own
        # process is not waited for when it reported its status: its teardown overlaps the reply.
        _kill_until_gone(spare, {pid} if status is not None else set())
        seconds = time.monotonic() - start
        reply: dict[str, Any] = {
            "id": req["id"],
            "timed_out": killed_for == "timeout",
            "seconds": seconds,
            "killed_for": killed_for if killed_for != "timeout" else None,
        }
        if code == TASK_EXIT_SETUP_FAILED:
            reply["setup_failed"] = True
        elif code < 0:
            reply["signal"] = -code
        else:
            reply["returncode"] = code
        return reply

    def _watch(
        self, pidfd: int, status_r: int, deadline: float, max_processes: int, spare: set[int]
    ) -> tuple[str | None, int | None]:
        """(kill reason, exit status reported by the program) once it ends or must be killed."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return "timeout", None
            ready = select.select([pidfd, status_r], [], [], min(remaining, POLL_SECONDS))[0]
            if status_r in ready:
                data = os.read(status_r, 1)
                if data:
                    return None, data[0]
                ready = [pidfd]  # the pipe closed without a status: wait for the exit itself
            if pidfd in ready:
                return None, None
            if max_processes and len(_descendants(spare)) > max_processes:
                return "processes", None


def run_task(runner: Runner, req: dict[str, Any], scratch: str) -> dict[str, Any]:
    """Run one program (`req["source"]`) in a fresh task directory; the reply dict."""
    task_dir = os.path.join(scratch, f"task-{req['id']}")
    shutil.rmtree(task_dir, ignore_errors=True)
    os.mkdir(task_dir, 0o700)
    try:
        with open(os.path.join(task_dir, "program.py"), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(req["source"])
    except BaseException:
        shutil.rmtree(task_dir, ignore_errors=True)
        raise
    # The program's process reads program.py from disk: the source need not travel down the pipe.
    return run_in_dir(runner, {k: v for k, v in req.items() if k != "source"}, task_dir)


def run_in_dir(runner: Runner, req: dict[str, Any], task_dir: str) -> dict[str, Any]:
    """Run `task_dir`'s program.py; the reply dict. The directory is removed afterwards."""
    try:
        reply = runner.run(dict(req, dir=task_dir))
        reply.update(_collect(task_dir, int(req["output_bytes"])))
        return reply
    finally:
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


def main() -> None:
    """Set up isolation, preload, then serve requests until stdin closes."""
    mode = sys.argv[1] if len(sys.argv) > 1 else "warm"
    config = json.loads(sys.argv[3]) if len(sys.argv) > 3 else {}
    # Workers may share a scratch root (levels without a private tmpfs): each works in its own
    # directory, entered before the root is masked, and reached only through its cwd afterwards.
    root = sys.argv[2] if len(sys.argv) > 2 else "/tmp/scicode-tasks"  # noqa: S108 - a private tmpfs
    own = os.path.join(root, f"worker-{os.getpid()}-{time.time_ns()}")
    os.makedirs(own, mode=0o700, exist_ok=True)
    os.chdir(own)
    if config.get("namespaces"):
        _become_namespace_init(config)
    scratch = "."
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
    runner = Runner(mode)
    runner.prepare()
    replies = os.fdopen(reply_fd, "w", buffering=1)
    replies.write(json.dumps({"ready": True, "pid": os.getpid(), "mode": mode}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            reply = run_task(runner, req, scratch)
        except Exception as e:  # noqa: BLE001 - reported as an infrastructure failure
            reply = {"id": req.get("id"), "setup_failed": True, "error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")
        runner.prepare()  # the next program's process, forked while the host reads this reply


if __name__ == "__main__":
    main()

"""The sandbox worker: runs step programs, one child process per program, and reports how each ended.

Protocol: one JSON request per line on stdin, one JSON reply per line on the original stdout.
A request carries the program's source; the worker writes it to a fresh task directory under its
scratch root (a size-limited tmpfs under bubblewrap), the child writes `stdout.txt`, `stderr.txt`
and `probe.bin` there, and the reply carries the probe bytes and the tails of the output files
back, so the sandbox never needs a directory the host can see. The worker enforces the wall-clock timeout itself and kills
every descendant of a task, however it detached: each task runs as PID 1 of its own PID namespace
when the kernel allows it (so killing it takes the whole namespace down), and the worker is a
child subreaper that kills whatever is left either way.

Modes: `warm` imports the scientific stack once and forks a child per task (tens of ms);
`fresh` starts a new interpreter per task, exactly like `python program.py`.

Usage: python -m scicode.runtime.worker {warm|fresh} SCRATCH_DIR
"""

from __future__ import annotations

import base64
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
    "numpy", "scipy", "scipy.integrate", "scipy.linalg", "scipy.optimize", "scipy.special",
    "scipy.sparse", "scipy.sparse.linalg", "scipy.interpolate", "scipy.signal", "scipy.fft",
    "scipy.constants", "scipy.spatial", "scipy.stats", "sympy", "scicode.codec",
    "scicode.runtime.probe", "scicode.compare.cmp",
)
CLONE_NEWNS, CLONE_NEWUSER, CLONE_NEWPID, CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000
PR_SET_PDEATHSIG, PR_CAPBSET_DROP, PR_SET_CHILD_SUBREAPER, PR_SET_NO_NEW_PRIVS = 1, 24, 36, 38
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_BIND, MS_REMOUNT, MS_REC, MS_PRIVATE = 1, 2, 4, 4096, 32, 16384, 1 << 18
POLL_SECONDS = 0.05
TASK_EXIT_SETUP_FAILED = 97
TAIL_BYTES = 16 * 1024

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    _libc.prctl(option, value, 0, 0, 0)


def _unshare(flags: int) -> bool:
    return _libc.unshare(flags) == 0


def _write_file(path: str, text: str) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.write(fd, text.encode())
    finally:
        os.close(fd)


def _new_namespaces(isolate_net: bool, mounts: bool = False) -> str:
    """Put this process's future children in a new PID (and network, and mount) namespace.

    Tries an unprivileged user namespace first (mapping our uid to itself), then plain root
    namespaces. Returns what it got: "pid+net", "pid" or "" (no namespace).
    """
    uid, gid = os.getuid(), os.getgid()
    net = (CLONE_NEWNET if isolate_net else 0) | (CLONE_NEWNS if mounts else 0)
    if _unshare(CLONE_NEWUSER | CLONE_NEWPID | net):
        try:
            _write_file("/proc/self/setgroups", "deny")
            _write_file("/proc/self/uid_map", f"{uid} {uid} 1")
            _write_file("/proc/self/gid_map", f"{gid} {gid} 1")
        except OSError:
            pass
        return "pid+net" if isolate_net else "pid"
    if _unshare(CLONE_NEWPID | net):
        return "pid+net" if isolate_net else "pid"
    return ""


def _mask(paths: list[str], read_only: list[str]) -> None:
    """In a private mount namespace, hide each path (an empty read-only tmpfs over a directory,
    /dev/null over a file) and make others read-only. Paths that do not exist are skipped."""
    if _libc.mount(None, b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        return
    for path in read_only:
        target = path.encode()
        if os.path.exists(path) and _libc.mount(target, target, None, MS_BIND | MS_REC, None) == 0:
            _libc.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)
    for path in paths:
        target = path.encode()
        if os.path.isdir(path):
            _libc.mount(b"none", target, b"tmpfs", MS_RDONLY | MS_NOSUID | MS_NODEV, b"size=4k")
        elif os.path.exists(path) and _libc.mount(b"/dev/null", target, None, MS_BIND, None) == 0:
            _libc.mount(None, target, None, MS_BIND | MS_REMOUNT | MS_RDONLY, None)


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]


def _drop_capabilities() -> None:
    """No capability left, none to regain: the program cannot undo the mounts or the limits."""
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
        try:
            resource.setrlimit(which, (soft, hard))
        except (ValueError, OSError):
            pass


def _task_main(req: dict[str, Any], mode: str) -> None:
    """In the task process: limits, files, then run the program. Never returns."""
    os.setsid()
    _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    os.chdir(req["dir"])  # before masking: the task directory stays reachable through the cwd
    if req.get("masks") or req.get("read_only"):
        _mask(req.get("masks") or [], req.get("read_only") or [])
    _drop_capabilities()
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD, signal.SIGALRM):
        signal.signal(sig, signal.SIG_DFL)
    null = os.open(os.devnull, os.O_RDONLY)
    out = os.open("stdout.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    err = os.open("stderr.txt", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    probe = os.open("probe.bin", os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_APPEND, 0o600)
    for src, dst in ((null, 0), (out, 1), (err, 2), (probe, 3)):
        os.dup2(src, dst)
    os.closerange(4, 65536)
    os.set_inheritable(3, True)
    _set_limits(req)
    env = dict(req["env"], HOME=req["dir"], PWD=req["dir"])
    if mode == "fresh":
        env["SCICODE_PROBE_FD"] = "3"
        os.execve(sys.executable, [sys.executable, "-m", "scicode.runtime.probe"], env)
    os.environ.clear()
    os.environ.update(env)
    import io

    from scicode.runtime.probe import PROGRAM_NAME, run_program

    sys.stdout = io.TextIOWrapper(io.FileIO(1, "w", closefd=False), write_through=False)
    sys.stderr = io.TextIOWrapper(io.FileIO(2, "w", closefd=False), errors="backslashreplace", line_buffering=True)
    sys.argv = [PROGRAM_NAME]
    code = run_program(PROGRAM_NAME, 3)
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    except BaseException:  # noqa: BLE001, S110 - the exit status is already decided
        pass
    os._exit(code if isinstance(code, int) and 0 <= code < 256 else 1)


def _intermediate(req: dict[str, Any], mode: str, report_fd: int) -> None:
    """Between worker and task: enter new namespaces, fork the task, report its pid, wait."""
    try:
        ns = _new_namespaces(req.get("isolate_net", True), bool(req.get("masks"))) if req.get("namespaces", True) else ""
        pid = os.fork()
        if pid == 0:
            try:
                _task_main(req, mode)
            finally:
                os._exit(TASK_EXIT_SETUP_FAILED)
        os.write(report_fd, json.dumps({"pid": pid, "ns": ns}).encode() + b"\n")
        _, status = os.waitpid(pid, 0)
        os._exit(os.waitstatus_to_exitcode(status) & 0xFF if os.WIFEXITED(status) else 128 + os.WTERMSIG(status))
    except BaseException:  # noqa: BLE001
        os._exit(TASK_EXIT_SETUP_FAILED)


def _watch(pidfd: int, task: int | None, intermediate: int, deadline: float, max_processes: int) -> str | None:
    """Wait for the task; "timeout" or "processes" when it must be killed, else None."""
    namespace = _pid_namespace(task) if task else None
    if namespace == _pid_namespace(os.getpid()):
        namespace = None  # no namespace of its own: count its descendants instead
    while True:
        remaining = deadline - time.monotonic()
        if remaining <= 0:
            return "timeout"
        if select.select([pidfd], [], [], min(remaining, POLL_SECONDS))[0]:
            return None
        if max_processes and _count_processes(namespace, intermediate) > max_processes:
            return "processes"


def _pid_namespace(pid: int) -> str | None:
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except OSError:
        return None


def _count_processes(namespace: str | None, root: int) -> int:
    """Processes of a task: those in its PID namespace, else the descendants of `root`."""
    pids = [int(p) for p in os.listdir("/proc") if p.isdigit()]
    if namespace is not None:
        return sum(1 for p in pids if _pid_namespace(p) == namespace)
    parents: dict[int, int] = {}
    for p in pids:
        try:
            with open(f"/proc/{p}/stat", "rb") as f:
                parents[p] = int(f.read().rsplit(b")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    family, changed = {root}, True
    while changed:
        grown = family | {p for p, parent in parents.items() if parent in family}
        changed, family = grown != family, grown
    return len(family) - 1


def _kill_descendants() -> None:
    """SIGKILL every remaining child of this (subreaper) worker, until none is left."""
    for _ in range(100):
        children = _children()
        if not children:
            return
        for pid in children:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        _reap()
        time.sleep(0.001)


def _children() -> list[int]:
    pids: list[int] = []
    task_dir = f"/proc/{os.getpid()}/task"
    for tid in os.listdir(task_dir):
        try:
            with open(f"{task_dir}/{tid}/children") as f:
                pids += [int(p) for p in f.read().split()]
        except OSError:
            pass
    return pids


def _reap() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def run_task(req: dict[str, Any], mode: str, scratch: str) -> dict[str, Any]:
    """Run one program in a fresh task directory; the reply dict."""
    task_dir = os.path.join(scratch, f"task-{req['id']}")
    shutil.rmtree(task_dir, ignore_errors=True)
    os.mkdir(task_dir, 0o700)
    try:
        with open(os.path.join(task_dir, "program.py"), "w", encoding="utf-8", errors="surrogateescape") as f:
            f.write(req["source"])
        reply = _run_in(dict(req, dir=task_dir), mode)
        reply.update(_collect(task_dir, int(req["output_bytes"])))
        return reply
    finally:
        shutil.rmtree(task_dir, ignore_errors=True)


def _collect(task_dir: str, limit: int) -> dict[str, Any]:
    """Outputs of a finished task: probe bytes (base64), output tails, file sizes."""
    out: dict[str, Any] = {"sizes": {}}
    for name in ("stdout.txt", "stderr.txt", "probe.bin"):
        path = os.path.join(task_dir, name)
        try:
            size = os.path.getsize(path)
        except OSError:
            size = 0
        out["sizes"][name] = size
        if name == "probe.bin":
            data = b""
            if 0 < size < limit:
                with open(path, "rb") as f:
                    data = f.read(limit)
            out["probe"] = base64.b64encode(data).decode()
        else:
            data = b""
            if size:
                with open(path, "rb") as f:
                    f.seek(max(0, size - TAIL_BYTES))
                    data = f.read()
            out[name.split(".")[0]] = data.decode("utf-8", errors="replace")
    return out


def _run_in(req: dict[str, Any], mode: str) -> dict[str, Any]:
    """Fork the intermediate for one task and wait for it, with the timeout."""
    start = time.monotonic()
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_fd)
        _intermediate(req, mode, write_fd)
    os.close(write_fd)
    deadline = start + float(req["timeout"])
    info: dict[str, Any] = {}
    with os.fdopen(read_fd, "rb") as pipe:
        line = pipe.readline()
    if line:
        info = json.loads(line)
    pidfd = os.pidfd_open(pid)
    killed_for = _watch(pidfd, info.get("pid"), pid, deadline, int(req.get("max_processes", 0)))
    timed_out = killed_for == "timeout"
    if killed_for:
        for victim in (info.get("pid"), pid):
            if victim:
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    pass
    _, status, usage = os.wait4(pid, 0)
    os.close(pidfd)
    seconds = time.monotonic() - start
    _kill_descendants()
    code = os.waitstatus_to_exitcode(status)
    reply: dict[str, Any] = {"id": req["id"], "timed_out": timed_out, "seconds": seconds, "ns": info.get("ns", ""),
                             "killed_for": killed_for if killed_for != "timeout" else None}
    if code == TASK_EXIT_SETUP_FAILED or not info:
        reply["setup_failed"] = True
    elif code >= 128 or code < 0:
        reply["signal"] = code - 128 if code >= 128 else -code
    else:
        reply["returncode"] = code
    return reply


def main() -> None:
    """Serve requests until stdin closes."""
    mode = sys.argv[1] if len(sys.argv) > 1 else "warm"
    # Workers may share a scratch root (levels without a private tmpfs): each gets its own directory.
    scratch = os.path.join(sys.argv[2] if len(sys.argv) > 2 else "/tmp/scicode-tasks", f"worker-{os.getpid()}")
    os.makedirs(scratch, mode=0o700, exist_ok=True)
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
    replies = os.fdopen(reply_fd, "w", buffering=1)
    replies.write(json.dumps({"ready": True, "pid": os.getpid(), "mode": mode}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        req = json.loads(line)
        try:
            reply = run_task(req, mode, scratch)
        except Exception as e:  # noqa: BLE001 - reported as an infrastructure failure
            reply = {"id": req.get("id"), "setup_failed": True, "error": f"{type(e).__name__}: {e}"}
        replies.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()

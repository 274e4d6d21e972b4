"""Isolation levels of the local backend, probed once, strongest first.

At `bwrap` and `unshare` the guarantees are the same; only what builds the worker's sandbox
differs (bubblewrap, or the worker itself with `enter_root`):

- The filesystem is a minimal read-only view: the OS, the interpreter and its libraries, the
  sandbox payload. Home directories, the checkout of an editable install, caches, targets, the
  package's data (gold code) and secret files are not there; site-packages is read-only.
- No network, no capabilities. The worker is PID 1 of its own PID namespace and not dumpable:
  programs cannot signal it, trace it or read its memory.
- Each program is PID 1 of namespaces of its own (PID, user, mount, IPC), with a fresh,
  size-capped `/tmp` and `/dev/shm`: when it ends, everything it started ends, and no file it
  wrote is visible to any later program.

- `none`: every descendant is still killed (child subreaper), but the program can read the user's
  files, reach the network and signal its worker. A warning is logged once, and every result
  records the level.

All levels also get: a scrubbed environment (no API keys or tokens), and per-program limits on
address space, file size, CPU time and core dumps, a new session, and a death signal.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from scicode.errors import ConfigError
from scicode.execution.base import PROGRAM_ENV
from scicode.runtime.worker import PROC_MASKS

logger = logging.getLogger(__name__)

LEVELS = ("auto", "bwrap", "unshare", "none")
SANDBOX_SCRATCH = "/tmp/scicode-tasks"  # noqa: S108 - inside the sandbox's private tmpfs
TMPFS_BYTES = 1 << 30
#: The host uid and gid sandboxes run as when scicode runs as root (`nobody`, `nogroup`).
SANDBOX_USER = (65534, 65534)
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc")
_SECRET_FILES = ("/etc/shadow", "/etc/gshadow", "/etc/shadow-", "/etc/gshadow-", "/etc/sudoers")
_PASS_ENV = ("PATH", "LANG", "LC_ALL", "TZ")
#: Where credentials usually live: hidden from programs at the `unshare` level.
_HOME_SECRETS = (
    ".prime",
    ".config",
    ".netrc",
    ".ssh",
    ".aws",
    ".docker",
    ".git-credentials",
    ".cache",
    ".pypirc",
    ".kube",
    ".gnupg",
    ".huggingface",
    ".bash_history",
    ".python_history",
)


@dataclass(frozen=True)
class RootSpec:
    """The filesystem a sandbox sees: all read-only but its private `/tmp`; nothing else of the host."""

    binds: tuple[str, ...]
    """Host paths shown read-only at the same place: the OS, the interpreter, the payload."""
    symlinks: tuple[tuple[str, str], ...]
    """(target, path): the OS's top-level symlinks (`/bin` -> `usr/bin`)."""
    masks: tuple[str, ...]
    """Paths inside the binds that stay hidden: secret files, installed package data, targets."""
    tmp_bytes: int

    def to_json(self) -> dict[str, object]:
        """The form `scicode.runtime.worker.enter_root` reads."""
        return {"binds": self.binds, "symlinks": self.symlinks, "masks": self.masks, "tmp_bytes": self.tmp_bytes}


@dataclass(frozen=True)
class Level:
    """An isolation level: how workers are started, and whether each program gets namespaces of its own."""

    name: str
    notes: str
    namespaces: bool
    python: str
    user: tuple[int, int] | None = None
    """Started as root: the unprivileged host user the sandbox runs as (None: as whoever starts it)."""

    def command(
        self,
        argv: Sequence[str],
        *,
        payload: Path,
        scratch: Path,
        hidden: Sequence[str],
        worker_tmp_bytes: int = TMPFS_BYTES,
        disk_bytes: int = TMPFS_BYTES,
    ) -> list[str]:
        """The command that starts a worker (`argv` + scratch dir + config) with this isolation.

        `worker_tmp_bytes` bounds the worker's own `/tmp` (where programs' outputs land); each
        program's scratch is a tmpfs of its own of `disk_bytes`.
        """
        config: dict[str, object] = {"isolate": self.namespaces, "disk_bytes": disk_bytes}
        if self.name == "bwrap":
            args = _bwrap_args(_root_spec(self.python, payload, hidden, worker_tmp_bytes))
            return [*self._as_user(), *args, "--", *argv, SANDBOX_SCRATCH, json.dumps(config)]
        if self.name == "unshare":
            config.update(namespaces=True, root=_root_spec(self.python, payload, hidden, worker_tmp_bytes).to_json())
            config["user"] = self.user
        return [*argv, str(scratch), json.dumps(config)]

    def _as_user(self) -> list[str]:
        """The command prefix that starts bubblewrap as `user` (see `unprivileged`), when run as root."""
        if self.user is None or os.geteuid() != 0:
            return []
        trampoline = Path(__file__).with_name("unprivileged.py")
        return [sys.executable, "-I", str(trampoline), *map(str, self.user), "--"]


def scrubbed_env(*, payload: Path) -> dict[str, str]:
    """The environment of workers and step programs: nothing secret, `PROGRAM_ENV`, the payload first."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    # PYTHONSAFEPATH: `python -m` must not import from the current directory (a checkout), only the payload.
    env.update(PROGRAM_ENV, PYTHONPATH=str(payload), PYTHONNOUSERSITE="1", PYTHONSAFEPATH="1")
    return env


def choose(requested: str, *, python: str) -> Level:
    """The level to use: `requested`, or for `auto` the strongest that works here.

    Raises:
        ConfigError: a level was requested explicitly but does not work on this machine.
    """
    if requested not in LEVELS:
        raise ConfigError(f"isolation={requested!r}: choose one of {', '.join(LEVELS)}")
    available = probe(python)
    if requested == "auto":
        for name in ("bwrap", "unshare"):
            if name in available:
                return available[name]
        _warn_unisolated()
        return available["none"]
    if requested not in available:
        raise ConfigError(
            f"isolation={requested!r} does not work on this machine; available: {', '.join(available)}. "
            + ("Install bubblewrap (apt-get install bubblewrap)." if requested == "bwrap" else "")
        )
    if requested == "none":
        _warn_unisolated()
    return available[requested]


@functools.cache
def _warn_unisolated() -> None:
    logger.warning(
        "scicode: step programs run WITHOUT isolation: model code can read your files (including "
        "targets) and reach the network. Install bubblewrap (apt-get install bubblewrap) or enable "
        "unprivileged user namespaces for a trustworthy score."
    )


@functools.cache
def probe(python: str) -> dict[str, Level]:
    """Which levels work with this interpreter (run once per process)."""
    levels = {"none": Level("none", "rlimits, new session, subreaper kill; no namespaces", False, python)}
    notes = {
        "unshare": "own namespaces and minimal read-only root per worker; "
        "PID, mount, IPC, UTS namespaces, seccomp and tmpfs per program",
        "bwrap": "bubblewrap: minimal read-only root, no network, no capabilities; "
        "PID, mount, IPC, UTS namespaces, seccomp and tmpfs per program",
    }
    for name in ("unshare", "bwrap"):
        if name == "bwrap" and not shutil.which("bwrap"):
            continue
        level = _working_variant(Level(name, notes[name], True, python))
        if level is not None:
            levels[name] = level
    return levels


def _working_variant(level: Level) -> Level | None:
    """`level` as it works here: as `SANDBOX_USER` when run as root, else as root if only that works.

    Where unprivileged user namespaces are refused (a sysctl or an AppArmor policy), root can
    still build the sandbox, mapped to itself; that beats no isolation, and is said loudly.
    """
    if os.geteuid() != 0:
        return level if _level_works(level) else None
    unprivileged = dataclasses.replace(
        level, user=SANDBOX_USER, notes=f"{level.notes}; runs as host uid {SANDBOX_USER[0]}"
    )
    if _level_works(unprivileged):
        return unprivileged
    if not _level_works(level):
        return None
    logger.warning(
        "scicode: isolation level %s works here only with the sandbox mapped to the host's root "
        "(unprivileged user namespaces are refused); allow them (sysctl kernel.unprivileged_userns_clone=1, "
        "or kernel.apparmor_restrict_unprivileged_userns=0) to run sandboxes as uid %d",
        level.name,
        SANDBOX_USER[0],
    )
    return dataclasses.replace(level, notes=level.notes + "; sandbox uid maps to host root")


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


@functools.cache
def _interpreter(python: str) -> tuple[list[str], list[str]]:
    """The interpreter's prefixes (and its executable's directories), and its `sys.path` entries."""
    code = (
        "import sys, os, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
        "os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(sys.executable)] + sys.path))"
    )
    result = _run([python, "-c", code], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if result is None or result.returncode != 0:
        raise ConfigError(f"cannot run the sandbox interpreter {python!r}: {result.stderr if result else 'failed'}")
    info = json.loads(result.stdout)
    return info[:5], info[5:]


@functools.cache
def _python_paths(python: str) -> tuple[str, ...]:
    """Directories the interpreter needs outside the system directories: prefixes, sys.path entries."""
    prefixes, entries = _interpreter(python)
    # Only the installation itself: sys.path entries outside it (an editable install's project
    # directory, PYTHONPATH additions) could expose a checkout, a cache or the targets.
    roots = {os.path.realpath(p) for p in prefixes if p and os.path.isdir(p)}
    inside = [
        p
        for p in entries
        if p
        and os.path.isdir(p)
        and any(os.path.realpath(p) == r or os.path.realpath(p).startswith(r + "/") for r in roots)
    ]
    paths = roots | {os.path.realpath(p) for p in inside} | {p for p in prefixes + inside if p and os.path.isdir(p)}
    return tuple(sorted(p for p in paths if not any(p == d or p.startswith(d + "/") for d in _SYSTEM_DIRS)))


def _package_dirs(python: str) -> list[str]:
    """Installed copies of this package the sandbox could import or read: hidden (they hold gold code).

    Every `sys.path` entry counts, those under the system directories too: an install in
    `/usr/local` is inside the `/usr` bind.
    """
    entries = _interpreter(python)[1]
    return [os.path.join(p, "scicode") for p in entries if p and os.path.isdir(os.path.join(p, "scicode", "data"))]


def _root_spec(python: str, payload: Path, hidden: Sequence[str], tmp_bytes: int) -> RootSpec:
    symlinks = tuple((os.readlink(d), d) for d in _SYSTEM_DIRS if os.path.islink(d))
    binds = [d for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d)]
    binds += [*_python_paths(python), str(payload)]
    masks = []
    for path in (*_SECRET_FILES, *hidden, *_package_dirs(python)):
        real = os.path.realpath(path)
        if os.path.exists(real) and any(real == b or real.startswith(b.rstrip("/") + "/") for b in binds):
            masks.append(real)
    return RootSpec(tuple(binds), symlinks, tuple(sorted(set(masks))), tmp_bytes)


def _bwrap_args(spec: RootSpec) -> list[str]:
    # --as-pid-1: the worker itself is PID 1 (the reaper of every orphan, unkillable from inside).
    # A non-root uid inside: the worker's per-program user namespaces may then map it without
    # capabilities (mapping uid 0 needs CAP_SETFCAP, which the sandbox does not have).
    inner = str(os.getuid() or 1000)
    args = ["bwrap", "--unshare-all", "--unshare-user", "--uid", inner, "--gid", inner]
    args += ["--die-with-parent", "--new-session", "--as-pid-1", "--cap-drop", "ALL"]
    for target, path in spec.symlinks:
        args += ["--symlink", target, path]
    # The private /tmp first: interpreter or payload paths under /tmp are bound on top of it.
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(spec.tmp_bytes), "--tmpfs", "/tmp"]  # noqa: S108
    # bubblewrap leaves /proc/sys writable when its directory is 0555: kernel-wide settings stay
    # read-only here whatever uid the sandbox maps to (core_pattern would run a command as host root).
    args += ["--ro-bind", "/proc/sys", "/proc/sys"]
    for name in PROC_MASKS:
        if os.path.exists(f"/proc/{name}"):
            args += ["--ro-bind", "/dev/null", f"/proc/{name}"]
    for path in spec.binds:
        args += ["--ro-bind", path, path]
    for path in spec.masks:
        args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    # bubblewrap's root and /dev are tmpfs shared by every program of the worker: read-only, or a
    # program could rename a directory above a bind and plant modules for the next one.
    args += ["--remount-ro", "/", "--remount-ro", "/dev"]
    args += ["--chdir", "/tmp"]  # noqa: S108 - the private tmpfs
    return args


def _level_works(level: Level) -> bool:
    """Whether a worker started at `level` runs a program in its own namespaces (one real round trip)."""
    import tempfile

    from scicode.execution.payload import write_payload

    with tempfile.TemporaryDirectory(prefix="scicode-probe-") as tmp:
        payload = write_payload(Path(tmp) / "payload")
        scratch = Path(tmp) / "tasks"
        scratch.mkdir()
        try:
            argv = [level.python, "-m", "scicode.runtime.worker", "fresh"]
            cmd = level.command(argv, payload=payload, scratch=scratch, hidden=(), worker_tmp_bytes=64 << 20)
        except ConfigError:
            return False
        request = {
            "id": 1,
            "source": "import os\nassert os.getpid() == 1, os.getpid()\n",
            "timeout": 60,
            "memory_bytes": 1 << 32,
            "output_bytes": 1 << 20,
            "disk_bytes": 1 << 20,
            "env": scrubbed_env(payload=payload),
        }
        try:
            result = subprocess.run(
                cmd,
                input=json.dumps(request) + "\n",
                capture_output=True,
                text=True,
                timeout=60,
                env=scrubbed_env(payload=payload),
                cwd=tmp,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired):
            return False
    replies = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
    ok = len(replies) == 2 and replies[1].get("returncode") == 0
    if not ok:
        logger.info("isolation level %s does not work here: %s %s", level.name, replies, result.stderr[-500:])
    return ok and replies[0].get("isolate") is True


def sandbox_python_default() -> str:
    """The interpreter step programs use unless `sandbox_python` names another."""
    return sys.executable

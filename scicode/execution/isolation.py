"""Isolation levels of the local backend, probed once, strongest first.

- `bwrap`: the program sees only the OS, the interpreter and its libraries (no home, no project,
  no targets, no package data, no other processes), writes only to a size-limited private tmpfs,
  has no network and no capabilities, cannot signal its worker (PID 1), cannot outlive its timeout.
- `unshare`: the worker has its own user, mount, network and PID namespaces (it is PID 1): no
  network, no way to outlive the timeout or to signal the worker, and targets, caches, package data,
  other workers' programs and the usual credential files are hidden; the harness is read-only. The
  program can still read the user's other files and write to the host's disks.
- `none`: every descendant is still killed (child subreaper), but the program can read the user's
  files, reach the network and signal its worker. A warning is logged once.

All levels also get: a scrubbed environment (no API keys or tokens), and per-program limits on
address space, file size, CPU time and core dumps, a new session, and a death signal.
"""

from __future__ import annotations

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

logger = logging.getLogger(__name__)

LEVELS = ("auto", "bwrap", "unshare", "none")
SANDBOX_SCRATCH = "/tmp/scicode-tasks"  # noqa: S108 - inside the sandbox's private tmpfs
TMPFS_BYTES = 1 << 30
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
class Level:
    """An isolation level: how workers are started and whether they make per-task namespaces."""

    name: str
    notes: str
    namespaces: bool
    python: str

    def command(
        self, argv: Sequence[str], *, payload: Path, scratch: Path, hidden: Sequence[str], disk_bytes: int = TMPFS_BYTES
    ) -> list[str]:
        """The command that starts a worker (`argv` + scratch dir + config) with this isolation."""
        if self.name == "bwrap":
            args = _bwrap_args(self.python, payload=payload, hidden=hidden, disk_bytes=disk_bytes)
            return [*args, "--", *argv, SANDBOX_SCRATCH]
        if self.name == "unshare":
            config = {"namespaces": True, "masks": self._masks([*hidden, str(scratch)]), "read_only": [str(payload)]}
            return [*argv, str(scratch), json.dumps(config)]
        return [*argv, str(scratch)]

    def _masks(self, hidden: Sequence[str]) -> list[str]:
        """What the worker's mount namespace hides at the `unshare` level.

        Targets, caches, the usual credential files, installed package data, and (by hiding the
        scratch root and keeping only the worker's own directory reachable) other workers' programs.
        """
        home = Path.home()
        paths = [*hidden, *(str(home / name) for name in _HOME_SECRETS), *_package_dirs(_python_paths(self.python))]
        return sorted({os.path.realpath(p) for p in paths if os.path.exists(p)})


def scrubbed_env(*, payload: Path) -> dict[str, str]:
    """The environment of workers and step programs: nothing secret, `PROGRAM_ENV`, the payload first."""
    env = {k: os.environ[k] for k in _PASS_ENV if k in os.environ}
    env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
    env.setdefault("LANG", "C.UTF-8")
    env.update(PROGRAM_ENV, PYTHONPATH=str(payload), PYTHONNOUSERSITE="1")
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
    if _namespaces_work(python):
        levels["unshare"] = Level(
            "unshare",
            "user, mount, network and PID namespaces per worker; secrets and other workers hidden",
            True,
            python,
        )
    if shutil.which("bwrap") and _bwrap_works(python):
        levels["bwrap"] = Level(
            "bwrap",
            "bubblewrap: minimal read-only filesystem, private tmpfs, no network, no capabilities, "
            "per-program PID namespace",
            True,
            python,
        )
    return levels


def _run(cmd: Sequence[str], env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str] | None:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, env=env, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None


def _namespaces_work(python: str) -> bool:
    code = (
        "import os,sys\n"
        "from scicode.runtime.worker import new_namespaces, apply_masks\n"
        "if not new_namespaces(): sys.exit(3)\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    apply_masks([], [])\n"
        "    os._exit(0 if os.getpid() == 1 and os.listdir('/proc') else 4)\n"
        "_, st = os.waitpid(pid, 0); sys.exit(os.waitstatus_to_exitcode(st))\n"
    )
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parents[2]))
    result = _run([python, "-c", code], env=env)
    return result is not None and result.returncode == 0


@functools.cache
def _python_paths(python: str) -> tuple[str, ...]:
    """Directories the interpreter needs: prefixes, the real executable's dir, sys.path entries."""
    code = (
        "import sys, os, json; print(json.dumps([sys.prefix, sys.base_prefix, sys.exec_prefix, "
        "os.path.dirname(os.path.realpath(sys.executable)), os.path.dirname(sys.executable)] + sys.path))"
    )
    result = _run([python, "-c", code], env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")})
    if result is None or result.returncode != 0:
        raise ConfigError(f"cannot run the sandbox interpreter {python!r}: {result.stderr if result else 'failed'}")
    info = json.loads(result.stdout)
    prefixes, entries = info[:5], info[5:]
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


def _package_dirs(python_paths: Sequence[str]) -> list[str]:
    """Installed copies of this package visible to the sandbox: hidden (they hold gold code)."""
    return [os.path.join(p, "scicode") for p in python_paths if os.path.isdir(os.path.join(p, "scicode", "data"))]


def _bwrap_args(python: str, *, payload: Path, hidden: Sequence[str], disk_bytes: int = TMPFS_BYTES) -> list[str]:
    # --as-pid-1: the worker itself is PID 1 (the reaper of every orphan, unkillable from inside).
    args = [
        "bwrap",
        "--unshare-all",
        "--unshare-user",
        "--die-with-parent",
        "--new-session",
        "--as-pid-1",
        "--cap-drop",
        "ALL",
    ]
    bound: list[str] = []
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            args += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            args += ["--ro-bind", d, d]
            bound.append(d)
    # The private /tmp first: interpreter or payload paths under /tmp are bound on top of it.
    args += ["--proc", "/proc", "--dev", "/dev", "--size", str(disk_bytes), "--tmpfs", "/tmp"]  # noqa: S108
    for p in _python_paths(python):
        args += ["--ro-bind", p, p]
        bound.append(p)
    args += ["--ro-bind", str(payload), str(payload)]
    masks = [*_SECRET_FILES, *hidden, *_package_dirs(_python_paths(python))]
    for path in masks:
        path = os.path.realpath(path)
        if not any(path == b or path.startswith(b.rstrip("/") + "/") for b in bound) or not os.path.exists(path):
            continue
        args += ["--tmpfs", path] if os.path.isdir(path) else ["--ro-bind", "/dev/null", path]
    args += ["--chdir", "/tmp"]  # noqa: S108 - the private tmpfs
    return args


def _bwrap_works(python: str) -> bool:
    import tempfile

    from scicode.execution.payload import write_payload

    with tempfile.TemporaryDirectory(prefix="scicode-probe-") as tmp:
        payload = write_payload(Path(tmp))
        try:
            cmd = [
                *_bwrap_args(python, payload=payload, hidden=()),
                "--",
                python,
                "-c",
                "import scicode.codec; print('ok')",
            ]
        except ConfigError:
            return False
        result = _run(cmd, env=scrubbed_env(payload=payload))
    if result is None or result.returncode != 0:
        logger.info("bubblewrap is installed but does not work here: %s", (result.stderr if result else "")[-500:])
        return False
    return result.stdout.strip() == "ok"


def sandbox_python_default() -> str:
    """The interpreter step programs use unless `sandbox_python` names another."""
    return sys.executable

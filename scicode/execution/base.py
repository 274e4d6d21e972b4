"""The executor contract: `StepProgram` in, `ExecResult` out, `SandboxUnavailable` on infrastructure failure."""

from __future__ import annotations

import atexit
import base64
import binascii
import importlib
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

from scicode.errors import ConfigError, SandboxUnavailable

#: Backend name -> module that registers it (imported on first use: heavy clients load lazily).
_BACKEND_MODULES = {
    "local": "scicode.execution.local",
    "docker": "scicode.execution.docker_backend",
    "prime": "scicode.execution.prime",
}
_INSTALL_HINTS = {"prime": "pip install 'scicode[prime]'", "docker": "pip install 'scicode[docker]'"}
_REGISTRY: dict[str, Callable[..., Executor]] = {}

PROGRAM_ENV = {
    "PYTHONDONTWRITEBYTECODE": "1",
    "MPLBACKEND": "Agg",
    "OPENBLAS_NUM_THREADS": "1",
    "OMP_NUM_THREADS": "1",
    "MKL_NUM_THREADS": "1",
    "NUMEXPR_NUM_THREADS": "1",
    "VECLIB_MAXIMUM_THREADS": "1",
}
"""In every step program's environment, whatever the backend: programs run side by side, so BLAS
gets one thread each; matplotlib never looks for a display."""


@dataclass(frozen=True)
class StepProgram:
    """A self-contained program that runs one step's tests in probe mode."""

    step_id: str
    source: str
    sections: tuple[tuple[str, int, int], ...] = ()
    """(label, first line, last line) of each part: dependencies, each step's code, tests."""

    def section_of(self, line: int | None) -> str | None:
        """The label of the part holding `line` (1-based)."""
        if line is None:
            return None
        return next((label for label, first, last in self.sections if first <= line <= last), None)


@dataclass(frozen=True)
class ExecResult:
    """How a program run ended. Produced by every backend."""

    returncode: int | None
    """Exit status; None when killed by a signal or the timeout."""
    signal: int | None
    stdout: str
    """Tail of standard output."""
    stderr: str
    """Tail of standard error."""
    probe: bytes
    """The probe stream (recorded values and how the program ended)."""
    seconds: float
    timed_out: bool
    output_exceeded: bool
    """A file the program wrote reached the size limit."""
    isolation: str
    """What isolated the run, e.g. "bwrap", "unshare(pid+net)", "none"."""
    killed_for: str | None = None
    """A limit the program was killed for, other than time (e.g. "processes")."""

    @classmethod
    def from_reply(cls, reply: dict[str, Any], *, output_mb: int, isolation: str) -> ExecResult:
        """The result a sandbox runtime reported (`scicode.runtime.worker`'s reply to a task).

        Raises:
            SandboxUnavailable: the runtime could not start the program, or the reply is malformed.
        """
        if reply.get("setup_failed"):
            raise SandboxUnavailable(f"the sandbox could not start the program: {reply.get('error', 'setup failed')}")
        try:
            probe = base64.b64decode(reply.get("probe") or "", validate=True)
        except (binascii.Error, ValueError) as e:
            raise SandboxUnavailable(f"the sandbox sent a malformed reply: {e}") from e
        limit = output_mb << 20
        return cls(
            returncode=reply.get("returncode"),
            signal=reply.get("signal"),
            stdout=str(reply.get("stdout", "")),
            stderr=str(reply.get("stderr", "")),
            probe=probe,
            seconds=float(reply.get("seconds", 0.0)),
            timed_out=bool(reply.get("timed_out")),
            output_exceeded=any(int(size) >= limit for size in (reply.get("sizes") or {}).values()),
            isolation=isolation,
            killed_for=reply.get("killed_for"),
        )


@dataclass(frozen=True)
class ExecutorOptions:
    """Options every backend understands; backend-specific ones live in `extra`."""

    memory_mb: int = 4096
    output_mb: int = 64
    disk_mb: int = 1024
    """Private scratch space of a sandbox (where the backend can bound it)."""
    max_processes: int = 256
    """Processes a program may run at once before it is killed."""
    concurrency: int = 0
    """Programs run at once; 0 means the number of CPU cores."""
    extra: dict[str, object] = field(default_factory=dict)


@runtime_checkable
class Executor(Protocol):
    """Runs step programs somewhere."""

    name: str

    async def run(self, program: StepProgram, *, timeout: float, session: str | None = None) -> ExecResult:
        """Run a program to completion or until `timeout` seconds pass.

        `session` names the rollout the program belongs to: backends that keep per-rollout
        sandboxes run a session's programs in the same one until `release(session)`.

        Returns an ExecResult whenever the program ran, whatever its outcome (a crash, a non-zero
        exit, a timeout with `timed_out=True`).

        Raises:
            SandboxUnavailable: the backend could not run it (not the program's fault).
        """
        ...

    async def release(self, session: str) -> None:
        """The rollout `session` ended: free what it held (a no-op for pooled backends)."""
        ...

    async def aclose(self) -> None:
        """Release every resource (processes, containers, remote sandboxes). Idempotent."""
        ...

    def describe(self) -> dict[str, object]:
        """What this executor is, for run metadata: backend, isolation level, versions."""
        ...


class _Cleanable(Protocol):
    def cleanup(self) -> None: ...


_LIVE: weakref.WeakSet[_Cleanable] = weakref.WeakSet()


def clean_up_at_exit(executor: _Cleanable) -> None:
    """Call `executor.cleanup()` (synchronous, idempotent) at interpreter exit if it is alive then.

    No worker, container or remote sandbox outlives a run whose event loop was torn down.
    """
    _LIVE.add(executor)


@atexit.register
def _clean_up_live() -> None:
    for executor in list(_LIVE):
        executor.cleanup()


def register_executor(name: str) -> Callable[[type], type]:
    """Class decorator registering an executor backend under `name`."""

    def decorator(cls: type) -> type:
        _REGISTRY[name] = cls
        cls.name = name  # type: ignore[attr-defined]
        return cls

    return decorator


def known_executors() -> tuple[str, ...]:
    """Names of all backends."""
    return tuple(_BACKEND_MODULES)


def make_executor(name: str, options: ExecutorOptions | None = None) -> Executor:
    """Build the executor `name`.

    Raises:
        ConfigError: unknown backend, or its client library is not installed.
    """
    if name not in _BACKEND_MODULES:
        raise ConfigError(f"unknown sandbox {name!r}; known: {', '.join(known_executors())}")
    if name not in _REGISTRY:
        try:
            importlib.import_module(_BACKEND_MODULES[name])
        except ImportError as e:
            hint = _INSTALL_HINTS.get(name, "reinstall scicode")
            raise ConfigError(f"sandbox {name!r} needs a library that is not installed ({e}); run: {hint}") from e
    return _REGISTRY[name](options or ExecutorOptions())

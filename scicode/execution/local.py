"""The `local` backend: step programs run on this machine, in a pool of sandboxed worker processes.

Each worker (`scicode.runtime.worker`) is started with a scrubbed environment (no API keys, BLAS
threads pinned to 1) and, at the strongest isolation level that works here (`scicode.execution.
isolation`), runs one task at a time: a child per program, inside its own PID and network
namespaces when the kernel allows, with limits on memory, file size and CPU, killed with all its
descendants at the timeout. In `warm` mode the workers have already imported numpy, scipy and
sympy, so a program starts in milliseconds instead of a second.

Only the sandbox runtime (a copy of `scicode.runtime`, `scicode.codec` and `scicode.compare`) is
importable by workers; targets never leave the trusted process.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from scicode.errors import ConfigError, SandboxUnavailable
from scicode.execution import isolation
from scicode.execution.base import ExecResult, ExecutorOptions, StepProgram, clean_up_at_exit, register_executor
from scicode.execution.payload import write_payload

WORKER_START_TIMEOUT = 120.0
REPLY_GRACE = 30.0


@dataclass(frozen=True)
class LocalOptions:
    """Options of the local backend, validated."""

    python: str
    isolation: str
    worker_mode: str
    concurrency: int
    memory_mb: int
    output_mb: int
    disk_mb: int
    max_processes: int
    hidden_paths: tuple[str, ...] = ()
    """Paths the sandbox must not see (targets files, caches), masked when the level allows."""

    @classmethod
    def from_options(cls, options: ExecutorOptions) -> LocalOptions:
        """Validated local options from the generic ones.

        Raises:
            ConfigError: an unknown worker mode or isolation level, or no such interpreter.
        """
        extra = options.extra
        mode = str(extra.get("worker_mode", "warm"))
        level = str(extra.get("isolation", "auto"))
        if mode not in ("warm", "fresh"):
            raise ConfigError(f"worker_mode={mode!r}: choose 'warm' or 'fresh'")
        if level not in isolation.LEVELS:
            raise ConfigError(f"isolation={level!r}: choose one of {', '.join(isolation.LEVELS)}")
        python = str(extra.get("python") or sys.executable)
        if not shutil.which(python) and not Path(python).is_file():
            raise ConfigError(f"sandbox_python={python!r} is not an executable")
        concurrency = options.concurrency or os.cpu_count() or 1
        return cls(
            python=python,
            isolation=level,
            worker_mode=mode,
            concurrency=max(1, int(concurrency)),
            memory_mb=int(options.memory_mb),
            output_mb=int(options.output_mb),
            disk_mb=int(options.disk_mb),
            max_processes=int(options.max_processes),
            hidden_paths=tuple(str(p) for p in extra.get("hidden_paths", ())),  # type: ignore[attr-defined]
        )


class _Worker:
    """One worker process and its request/reply pipes."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.next_id = 0

    @property
    def alive(self) -> bool:
        return self.proc.returncode is None

    async def request(self, payload: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        assert self.proc.stdin is not None and self.proc.stdout is not None
        self.next_id += 1
        payload = {**payload, "id": self.next_id}
        self.proc.stdin.write((json.dumps(payload) + "\n").encode())
        await self.proc.stdin.drain()
        line = await asyncio.wait_for(self.proc.stdout.readline(), timeout)
        if not line:
            raise SandboxUnavailable(f"sandbox worker {self.proc.pid} exited (status {self.proc.returncode})")
        reply = json.loads(line)
        if reply.get("id") != self.next_id:
            raise SandboxUnavailable(f"sandbox worker {self.proc.pid} answered out of turn")
        return reply

    def kill(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


@register_executor("local")
class LocalExecutor:
    """Runs step programs on this machine (see module docstring)."""

    name = "local"

    def __init__(self, options: ExecutorOptions) -> None:
        self.options = LocalOptions.from_options(options)
        self._root = Path(tempfile.mkdtemp(prefix="scicode-local-"))
        os.chmod(self._root, 0o711)  # noqa: S103 - traversable, not listable: tasks live below in 0700 dirs
        self._tasks = self._root / "tasks"  # task directories, for levels without a private tmpfs
        self._tasks.mkdir(mode=0o700)
        self._payload = write_payload(self._root / "payload")
        self._level = isolation.choose(self.options.isolation, python=self.options.python)
        self._idle: asyncio.Queue[_Worker | None] | None = None  # None: a slot to (re)spawn
        self._workers: list[_Worker] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._task_counter = 0
        clean_up_at_exit(self)

    # -- lifecycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> LocalExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    def describe(self) -> dict[str, object]:
        """Backend, isolation level and worker mode, for run metadata."""
        return {
            "sandbox": "local",
            "isolation": self._level.name,
            "isolation_notes": self._level.notes,
            "worker_mode": self.options.worker_mode,
            "concurrency": self.options.concurrency,
            "python": self.options.python,
        }

    @property
    def isolation(self) -> str:
        """The isolation level in use."""
        return self._level.name

    def _env(self) -> dict[str, str]:
        return isolation.scrubbed_env(payload=self._payload)

    async def _ensure_started(self) -> None:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:  # a new event loop: pipes of the old one are unusable
            self._kill_all()
            self._loop, self._workers = loop, []
            self._idle = asyncio.Queue()
            for _ in range(self.options.concurrency):
                self._idle.put_nowait(None)

    async def _acquire(self) -> _Worker:
        """An idle live worker, spawning one into a free slot when needed."""
        assert self._idle is not None
        worker = await self._idle.get()
        if worker is not None and worker.alive:
            return worker
        if worker is not None:
            self._workers.remove(worker)
        try:
            worker = await self._spawn()
        except BaseException:
            self._idle.put_nowait(None)  # keep the slot: a later call retries the spawn
            raise
        self._workers.append(worker)
        return worker

    async def _spawn(self) -> _Worker:
        cmd = self._level.command(
            [self.options.python, "-m", "scicode.runtime.worker", self.options.worker_mode],
            payload=self._payload,
            scratch=self._tasks,
            hidden=self.options.hidden_paths,
            # The worker's own /tmp holds only a program's three output files at a time.
            worker_tmp_bytes=(3 * self.options.output_mb + 64) << 20,
            disk_bytes=self.options.disk_mb << 20,
        )
        log = open(self._root / "worker.log", "ab")  # noqa: SIM115 - owned by the child
        try:
            proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=self._env(),
                cwd=self._root,
                start_new_session=True,
                limit=(self.options.output_mb << 21) + (1 << 20),  # base64 probe + tails in one line
            )
        except OSError as e:
            raise SandboxUnavailable(f"cannot start a sandbox worker ({cmd[0]}): {e}") from e
        finally:
            log.close()
        assert proc.stdout is not None
        try:
            ready = await asyncio.wait_for(proc.stdout.readline(), WORKER_START_TIMEOUT)
        except TimeoutError:
            ready = b""
        if not ready or not json.loads(ready).get("ready"):
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            tail = (self._root / "worker.log").read_text(errors="replace")[-2000:]
            raise SandboxUnavailable(f"a sandbox worker failed to start ({' '.join(cmd[:3])}…):\n{tail}")
        return _Worker(proc)

    async def aclose(self) -> None:
        """Stop all workers and delete the scratch directory."""
        if self._closed:
            return
        self._closed = True
        self._kill_all()
        for w in self._workers:
            with contextlib.suppress(Exception):
                await asyncio.shield(w.proc.wait())
        shutil.rmtree(self._root, ignore_errors=True)

    def _kill_all(self) -> None:
        for w in self._workers:
            w.kill()

    def cleanup(self) -> None:
        """Synchronous cleanup (atexit): kill workers, remove scratch."""
        self._closed = True
        self._kill_all()
        shutil.rmtree(self._root, ignore_errors=True)

    # -- running -----------------------------------------------------------------------------

    async def release(self, session: str) -> None:
        """Workers are shared by all rollouts: nothing to release."""

    async def run(self, program: StepProgram, *, timeout: float, session: str | None = None) -> ExecResult:
        """Run one program in an idle worker (see `Executor.run`; `session` is not needed here)."""
        if self._closed:
            raise SandboxUnavailable("the local executor is closed")
        await self._ensure_started()
        assert self._idle is not None
        worker = await self._acquire()
        try:
            reply = await self._ask(worker, program, timeout)
            return ExecResult.from_reply(reply, output_mb=self.options.output_mb, isolation=self._level.name)
        finally:
            self._idle.put_nowait(worker)

    async def _ask(self, worker: _Worker, program: StepProgram, timeout: float) -> dict[str, Any]:
        request = {
            "source": program.source,
            "timeout": float(timeout),
            "memory_bytes": self.options.memory_mb << 20,
            "output_bytes": self.options.output_mb << 20,
            "env": self._env(),
            "max_processes": self.options.max_processes,
        }
        try:
            reply = await worker.request(request, timeout=timeout + REPLY_GRACE)
        except (TimeoutError, OSError, ValueError, SandboxUnavailable) as e:
            worker.kill()
            await worker.proc.wait()
            raise SandboxUnavailable(
                f"sandbox worker died while running the program: {type(e).__name__}: {e}", during_program=True
            ) from e
        return reply

"""The `prime` backend: step programs run in Prime Intellect remote sandboxes (`prime-sandboxes`).

The path to scale: each program runs in a remote VM, so a training run is not bounded by this
machine's cores. Design:

* A pool of sandboxes per executor, each labelled with this run's label (cleanup by label) and
  created with all egress denied (`network_allowlist=[]`), or, for the default public image that
  must install its pinned stack at start, with egress limited to PyPI.
* Sandboxes are affine to a rollout (`session`): a rollout's steps run one after another in one
  sandbox, so a rollout uses at most one sandbox; when it ends the sandbox goes back to the pool
  for the next rollout, warm.
* A step is one upload (a small tar: the program, plus the sandbox runtime on first use) and one
  command, which runs `scicode.runtime.remote` under `timeout -k` inside the sandbox (the SDK's own
  timeout only stops waiting) and prints the probe bytes and output tails as one JSON line.
  Targets are never uploaded; the probe comes back and is judged on the trusted side.
* Failures of the service (creation, 429/5xx, dropped connections) are retried with backoff; a
  sandbox that dies or stops answering during a program is replaced and the program retried; what
  persists is raised as `SandboxUnavailable` (recorded as `sandbox_error`, or as the program's
  failure if the sandbox died under it every time).
* Cleanup: on `aclose` every sandbox is deleted and a bulk delete by label sweeps the rest; an
  `atexit` hook does the same synchronously if the event loop is gone.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

from scicode.errors import ConfigError, SandboxUnavailable
from scicode.execution import remote
from scicode.execution.base import ExecResult, ExecutorOptions, StepProgram, clean_up_at_exit, register_executor
from scicode.execution.remote import DEFAULT_IMAGE, ROOT

logger = logging.getLogger(__name__)

PYPI_HOSTS = ["pypi.org", "files.pythonhosted.org"]
COMMAND_MARGIN = 60
BOOTSTRAP_SECONDS = 900


@dataclass(frozen=True)
class PrimeOptions:
    """Options of the prime backend, validated."""

    image: str
    name: str
    cpu_cores: float
    memory_gb: float
    disk_gb: float
    labels: tuple[str, ...]
    max_sandboxes: int
    memory_mb: int
    output_mb: int
    max_processes: int
    bootstrap: bool
    python: str = "python"
    """The sandbox image's interpreter."""
    ready_timeout: float = 600.0
    api_retries: int = 3
    backoff: float = 1.0
    command_margin: float = COMMAND_MARGIN
    """Seconds the client waits beyond the program's timeout before calling the sandbox hung."""

    @classmethod
    def from_options(cls, options: ExecutorOptions) -> PrimeOptions:
        """Validated prime options from the generic ones.

        Raises:
            ConfigError: a resource size or label is invalid.
        """
        extra = options.extra
        image = str(extra.get("image") or DEFAULT_IMAGE)
        opts = cls(
            image=image,
            name=str(extra.get("name") or "scicode"),
            cpu_cores=float(extra.get("cpu_cores", 1)),  # type: ignore[arg-type]
            memory_gb=float(extra.get("memory_gb", 4)),  # type: ignore[arg-type]
            disk_gb=float(extra.get("disk_gb", 5)),  # type: ignore[arg-type]
            labels=tuple(str(x) for x in extra.get("labels", ())),  # type: ignore[attr-defined]
            max_sandboxes=int(options.concurrency or 8),
            memory_mb=int(options.memory_mb),
            output_mb=int(options.output_mb),
            max_processes=int(options.max_processes),
            bootstrap=bool(extra.get("bootstrap", image == DEFAULT_IMAGE)),
            python=str(extra.get("remote_python") or "python"),
            ready_timeout=float(extra.get("ready_timeout", 600.0)),  # type: ignore[arg-type]
            api_retries=int(extra.get("api_retries", 3)),  # type: ignore[call-overload]
            backoff=float(extra.get("backoff", 1.0)),  # type: ignore[arg-type]
            command_margin=float(extra.get("command_margin", COMMAND_MARGIN)),  # type: ignore[arg-type]
        )
        if min(opts.cpu_cores, opts.memory_gb, opts.disk_gb) <= 0 or opts.max_sandboxes < 1:
            raise ConfigError("sandbox_cpu_cores, sandbox_memory_gb, sandbox_disk_gb and concurrency must be positive")
        return opts


@dataclass
class _Sandbox:
    id: str
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    has_runtime: bool = False
    dead: bool = False
    steps: int = 0
    holds_slot: bool = False
    """True while it counts against the pool's size (taken, and not yet given back)."""


def _is_gone(error: BaseException) -> bool:
    """True for errors that mean the sandbox no longer runs."""
    from prime_sandboxes import SandboxNotRunningError

    markers = ("404", "410", "not_found", "terminated")
    return isinstance(error, SandboxNotRunningError) or any(s in str(error) for s in markers)


@register_executor("prime")
class PrimeExecutor:
    """Runs step programs in Prime remote sandboxes (see module docstring)."""

    name = "prime"

    def __init__(self, options: ExecutorOptions) -> None:
        try:
            import prime_sandboxes  # noqa: F401
        except ImportError as e:  # pragma: no cover - the dependency is declared
            raise ConfigError("sandbox='prime' needs prime-sandboxes: pip install 'scicode[prime]'") from e
        self.options = PrimeOptions.from_options(options)
        self.run_label = f"scicode-run-{uuid.uuid4().hex[:12]}"
        self._client: Any = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._all: dict[str, _Sandbox] = {}
        self._idle: list[_Sandbox] = []
        self._sessions: dict[str, _Sandbox] = {}
        self._slots: asyncio.Semaphore | None = None
        self._session_locks: dict[str, asyncio.Lock] = {}
        self._counter = 0
        self._closed = False
        self._runtime = remote.runtime_files(with_requirements=True)
        clean_up_at_exit(self)

    # -- lifecycle -------------------------------------------------------------------------------

    async def __aenter__(self) -> PrimeExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    @property
    def isolation(self) -> str:
        """What isolates a program: a remote VM per sandbox, egress denied (or PyPI only)."""
        return "prime-vm" + ("(egress: PyPI only)" if self.options.bootstrap else "(no egress)")

    def describe(self) -> dict[str, object]:
        """Backend, image and run label, for run metadata."""
        return {
            "sandbox": "prime",
            "isolation": self.isolation,
            "image": self.options.image,
            "run_label": self.run_label,
            "max_sandboxes": self.options.max_sandboxes,
        }

    def _client_for_loop(self) -> Any:
        from prime_sandboxes import AsyncSandboxClient

        loop = asyncio.get_running_loop()
        if self._client is None or self._loop is not loop:
            self._client, self._loop = AsyncSandboxClient(), loop
            self._slots = asyncio.Semaphore(self.options.max_sandboxes)
            self._idle, self._sessions, self._session_locks = [], {}, {}
            for sandbox in self._all.values():  # locks belong to the old loop: fresh records
                sandbox.lock = asyncio.Lock()
                self._idle.append(sandbox)
        return self._client

    async def aclose(self) -> None:
        """Delete every sandbox of this run (each, then by label). Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._client is None:
            return
        client = self._client
        for sandbox_id in list(self._all):
            with contextlib.suppress(Exception):
                await asyncio.shield(client.delete(sandbox_id))
        with contextlib.suppress(Exception):
            await asyncio.shield(client.bulk_delete(labels=[self.run_label]))
        self._all.clear()
        with contextlib.suppress(Exception):
            await client.aclose()

    def cleanup(self) -> None:
        """Synchronous cleanup (atexit): bulk delete by this run's label."""
        if self._closed or not self._all:
            return
        self._closed = True
        try:
            from prime_sandboxes import APIClient, SandboxClient

            SandboxClient(APIClient()).bulk_delete(labels=[self.run_label])
        except Exception as e:  # noqa: BLE001 - best effort at exit; the label allows a manual sweep
            logger.warning("could not delete sandboxes labelled %s: %s", self.run_label, e)

    # -- sandboxes -------------------------------------------------------------------------------

    async def _acquire(self, session: str | None) -> _Sandbox:
        """The session's sandbox, else an idle one, else a new one (waiting for a free slot).

        A session's concurrent steps wait for one assignment: a rollout holds one slot at most,
        so rollouts waiting for a slot always wait on rollouts that can finish.
        """
        if session is None:
            return await self._take()
        lock = self._session_locks.setdefault(session, asyncio.Lock())
        async with lock:
            current = self._sessions.get(session)
            if current is not None and not current.dead:
                return current
            sandbox = await self._take()
            self._sessions[session] = sandbox
            return sandbox

    async def _take(self) -> _Sandbox:
        assert self._slots is not None
        await self._slots.acquire()
        try:
            sandbox = self._idle.pop() if self._idle else await self._create()
        except BaseException:
            self._slots.release()
            raise
        sandbox.holds_slot = True
        return sandbox

    def _give_back(self, sandbox: _Sandbox) -> None:
        """Return a sandbox's slot (once), and the sandbox itself to the pool if it still runs."""
        assert self._slots is not None
        if not sandbox.holds_slot:
            return
        sandbox.holds_slot = False
        if not sandbox.dead:
            self._idle.append(sandbox)
        self._slots.release()

    async def release(self, session: str) -> None:
        """A rollout ended: its sandbox goes back to the pool."""
        sandbox = self._sessions.pop(session, None)
        self._session_locks.pop(session, None)
        if sandbox is not None:
            async with sandbox.lock:
                self._give_back(sandbox)

    async def _create(self) -> _Sandbox:
        from prime_sandboxes import CreateSandboxRequest

        client = self._client
        self._counter += 1
        request = CreateSandboxRequest(  # type: ignore[call-arg]
            name=f"{self.options.name}-{self.run_label[-12:]}-{self._counter}",
            docker_image=self.options.image,
            cpu_cores=self.options.cpu_cores,
            memory_gb=self.options.memory_gb,
            disk_size_gb=self.options.disk_gb,
            network_allowlist=PYPI_HOSTS if self.options.bootstrap else [],
            labels=["scicode", self.run_label, *self.options.labels],
            timeout_minutes=24 * 60,
        )
        created = await self._api(lambda: client.create(request), "create a sandbox")
        sandbox = _Sandbox(created.id)
        self._all[sandbox.id] = sandbox
        try:
            await self._wait_ready(sandbox.id)
        except SandboxUnavailable:
            self._forget(sandbox)
            raise
        return sandbox

    async def _wait_ready(self, sandbox_id: str) -> None:
        client, deadline, delay = self._client, time.monotonic() + self.options.ready_timeout, 0.25
        while True:
            response = await self._api(lambda: client.get_sandbox_statuses([sandbox_id]), "poll a sandbox")
            status = next((s.status for s in response.statuses if s.sandbox_id == sandbox_id), None)
            if status == "RUNNING":
                return
            if status in ("ERROR", "TERMINATED", "TIMEOUT") or response.errors:
                raise SandboxUnavailable(f"sandbox {sandbox_id} failed to start ({status or response.errors})")
            if time.monotonic() > deadline:
                raise SandboxUnavailable(f"sandbox {sandbox_id} not running after {self.options.ready_timeout:.0f} s")
            await asyncio.sleep(delay)
            delay = min(delay * 1.5, 5.0)

    def _forget(self, sandbox: _Sandbox) -> None:
        """Mark a sandbox dead and delete it in the background (the label sweep is the backstop)."""
        sandbox.dead = True
        self._all.pop(sandbox.id, None)
        for key in [k for k, v in self._sessions.items() if v is sandbox]:
            del self._sessions[key]
        client = self._client

        async def delete() -> None:
            with contextlib.suppress(Exception):
                await client.delete(sandbox.id)

        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(delete())

    async def _api(self, call: Any, what: str, sandbox: _Sandbox | None = None) -> Any:
        """A service call, retried with backoff; a sandbox found gone is forgotten at once."""
        from prime_sandboxes import APIError, APITimeoutError

        last: Exception | None = None
        for attempt in range(self.options.api_retries + 1):
            try:
                return await call()
            except (APIError, APITimeoutError, OSError, RuntimeError) as e:
                last = e
                if sandbox is not None and _is_gone(e):
                    self._forget(sandbox)
                    break
                await asyncio.sleep(self.options.backoff * 2**attempt)
        raise SandboxUnavailable(f"could not {what}: {type(last).__name__}: {last}") from last

    # -- running ---------------------------------------------------------------------------------

    async def run(self, program: StepProgram, *, timeout: float, session: str | None = None) -> ExecResult:
        """Run one program in a sandbox (see `Executor.run`)."""
        if self._closed:
            raise SandboxUnavailable("the prime executor is closed")
        self._client_for_loop()
        sandbox = await self._acquire(session)
        try:
            async with sandbox.lock:
                if sandbox.dead:  # it died under another step of this rollout
                    raise SandboxUnavailable(f"sandbox {sandbox.id} is gone", during_program=False)
                return await self._run_in(sandbox, program, timeout)
        finally:
            if session is None or sandbox.dead:
                if session is not None and self._sessions.get(session) is sandbox:
                    del self._sessions[session]
                self._give_back(sandbox)

    async def _run_in(self, sandbox: _Sandbox, program: StepProgram, timeout: float) -> ExecResult:
        from prime_sandboxes import APIError, CommandTimeoutError

        sandbox.steps += 1
        bundle = f"/tmp/scicode-{uuid.uuid4().hex[:10]}.tar.gz"  # noqa: S108 - the sandbox's own /tmp
        task = f"tasks/t{sandbox.steps}"
        files = remote.program_file(program.source, task)
        if not sandbox.has_runtime:
            files.update(self._runtime)
        data = remote.tar_bytes(files, gzip=True)
        client = self._client
        await self._api(
            lambda: client.upload_bytes(sandbox.id, bundle, data, "bundle.tar.gz"), "upload a program", sandbox
        )
        command = self._command(bundle, task, timeout)
        bootstrap = BOOTSTRAP_SECONDS if self.options.bootstrap and not sandbox.has_runtime else 0
        limit = int(timeout + self.options.command_margin + bootstrap)
        try:
            response = await client.execute_command(sandbox.id, command, timeout=limit)
        except CommandTimeoutError as e:
            self._forget(sandbox)
            message = f"sandbox {sandbox.id} stopped answering during the program"
            raise SandboxUnavailable(message, during_program=True) from e
        except (APIError, OSError, RuntimeError) as e:
            gone = _is_gone(e)
            if gone:
                self._forget(sandbox)
            message = f"running a program in sandbox {sandbox.id} failed: {e}"
            raise SandboxUnavailable(message, during_program=gone) from e
        failure = f"the sandbox did not run the step (exit {response.exit_code}): {response.stderr[-1500:]}"
        reply = remote.read_reply(response.stdout, failure)
        sandbox.has_runtime = True
        return ExecResult.from_reply(reply, output_mb=self.options.output_mb, isolation=self.isolation)

    def _command(self, bundle: str, task: str, timeout: float) -> str:
        """The step's shell command.

        Paths go through `$SANDBOX_ROOT` (unset in a real sandbox) so that a local stand-in of the
        service can run it under a directory of its own.
        """
        python = shlex.quote(self.options.python)
        bootstrap = (
            f'if [ ! -f "$R/.stack" ]; then {python} -m pip install -q --no-cache-dir -r "$R/requirements.txt" '
            f'> "$R/bootstrap.log" 2>&1 || {{ tail -c 2000 "$R/bootstrap.log" >&2; exit 97; }}; touch "$R/.stack"; fi; '
            if self.options.bootstrap
            else ""
        )
        return (
            f'set -e; R="${{SANDBOX_ROOT:-}}{ROOT}"; mkdir -p "$R"; tar -xzf "${{SANDBOX_ROOT:-}}{bundle}" -C "$R"; '
            f'rm -f "${{SANDBOX_ROOT:-}}{bundle}"; {bootstrap}cd "$R"; '
            f'SCICODE_ROOT="$R" PYTHONPATH="$R/payload" timeout -k 5 {int(timeout) + 30} '
            f"{python} -m scicode.runtime.remote {shlex.quote(remote.request(task, timeout, self.options))}"
        )

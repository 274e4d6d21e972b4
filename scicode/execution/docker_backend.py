"""The `docker` backend: step programs run in long-lived, locked-down containers on a local engine.

Each container: no network (after an optional bootstrap of the pinned stack into a plain Python
image, the container is disconnected from every network), read-only root filesystem, a tmpfs for
its scratch space, CPU, memory and process limits, every capability dropped, no new privileges,
labelled with this run's label for cleanup. A step is one archive copy and one `exec`, running
`scicode.runtime.remote` under `timeout -k`, exactly as in remote sandboxes. A missing engine is
reported at once, when the environment is loaded.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from dataclasses import dataclass
from typing import Any

from scicode.errors import ConfigError, SandboxUnavailable
from scicode.execution import remote
from scicode.execution.base import ExecResult, ExecutorOptions, StepProgram, clean_up_at_exit, register_executor
from scicode.execution.remote import DEFAULT_IMAGE, ROOT

#: The program's view of the stack, which the bootstrap installs as user site-packages.
STACK_ENV = {"PYTHONUSERBASE": f"{ROOT}/stack", "HOME": ROOT}


@dataclass(frozen=True)
class DockerOptions:
    """Options of the docker backend, validated."""

    image: str
    name: str
    cpu_cores: float
    memory_gb: float
    disk_mb: int
    labels: tuple[str, ...]
    containers: int
    memory_mb: int
    output_mb: int
    max_processes: int
    bootstrap: bool

    @classmethod
    def from_options(cls, options: ExecutorOptions) -> DockerOptions:
        """Validated docker options from the generic ones."""
        extra = options.extra
        image = str(extra.get("image") or DEFAULT_IMAGE)
        return cls(
            image=image,
            name=str(extra.get("name") or "scicode"),
            cpu_cores=float(extra.get("cpu_cores", 1)),  # type: ignore[arg-type]
            memory_gb=float(extra.get("memory_gb", 4)),  # type: ignore[arg-type]
            disk_mb=int(options.disk_mb),
            labels=tuple(str(x) for x in extra.get("labels", ())),  # type: ignore[attr-defined]
            containers=int(options.concurrency or 2),
            memory_mb=int(options.memory_mb),
            output_mb=int(options.output_mb),
            max_processes=int(options.max_processes),
            bootstrap=bool(extra.get("bootstrap", image == DEFAULT_IMAGE)),
        )


def container_spec(options: DockerOptions, run_label: str, index: int) -> dict[str, Any]:
    """Keyword arguments of `containers.run` for one locked-down container."""
    return {
        "image": options.image,
        "command": ["sleep", "infinity"],
        "name": f"{options.name}-{run_label[-12:]}-{index}",
        "detach": True,
        "auto_remove": False,
        "init": True,
        "network_mode": "bridge" if options.bootstrap else "none",
        "read_only": True,
        "tmpfs": {ROOT: f"size={options.disk_mb}m,exec", "/tmp": "size=64m"},  # noqa: S108
        "mem_limit": f"{int(options.memory_gb * 1024)}m",
        "memswap_limit": f"{int(options.memory_gb * 1024)}m",
        "nano_cpus": int(options.cpu_cores * 1e9),
        "pids_limit": options.max_processes + 64,
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "labels": {"scicode": "1", "scicode.run": run_label, **{label: "1" for label in options.labels}},
        "environment": {"PYTHONPATH": f"{ROOT}/payload", **STACK_ENV},
    }


@register_executor("docker")
class DockerExecutor:
    """Runs step programs in local Docker containers (see module docstring)."""

    name = "docker"

    def __init__(self, options: ExecutorOptions) -> None:
        try:
            import docker
        except ImportError as e:
            raise ConfigError("sandbox='docker' needs the docker SDK: pip install 'scicode[docker]'") from e
        try:
            self._client = docker.from_env()
            self._client.ping()
        except Exception as e:
            raise ConfigError(
                f"sandbox='docker' needs a running Docker engine, and none answered ({type(e).__name__}: {e}). "
                "Start the Docker daemon (or set DOCKER_HOST), or use sandbox='local'."
            ) from e
        self.options = DockerOptions.from_options(options)
        self.run_label = f"scicode-run-{uuid.uuid4().hex[:12]}"
        self._idle: asyncio.Queue[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._containers: list[Any] = []
        self._counter = 0
        self._closed = False
        clean_up_at_exit(self)

    @property
    def isolation(self) -> str:
        """Containers: no network, read-only root, no capabilities, resource limits."""
        return "docker(no network, read-only root, no capabilities)"

    def describe(self) -> dict[str, object]:
        """Backend, image and run label."""
        return {
            "sandbox": "docker",
            "isolation": self.isolation,
            "image": self.options.image,
            "run_label": self.run_label,
        }

    async def __aenter__(self) -> DockerExecutor:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def release(self, session: str) -> None:
        """Containers are shared by all rollouts: nothing to release."""

    async def aclose(self) -> None:
        """Remove every container of this run. Idempotent."""
        if not self._closed:
            self._closed = True
            await asyncio.to_thread(self.cleanup)

    def cleanup(self) -> None:
        """Synchronous cleanup: remove containers by this run's label."""
        self._closed = True
        with contextlib.suppress(Exception):
            for c in self._client.containers.list(all=True, filters={"label": f"scicode.run={self.run_label}"}):
                with contextlib.suppress(Exception):
                    c.remove(force=True)

    async def _acquire(self) -> Any:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            self._loop, self._idle = loop, asyncio.Queue()
            for _ in range(self.options.containers):
                self._idle.put_nowait(None)
        assert self._idle is not None
        container = await self._idle.get()
        if container is not None:
            return container
        try:
            return await asyncio.to_thread(self._start_container)
        except BaseException:
            self._idle.put_nowait(None)
            raise

    def _start_container(self) -> Any:
        self._counter += 1
        try:
            container = self._client.containers.run(**container_spec(self.options, self.run_label, self._counter))
            self._containers.append(container)
            self._put(container, remote.runtime_files(with_requirements=self.options.bootstrap))
            if self.options.bootstrap:
                code, out = container.exec_run(
                    [
                        "python",
                        "-m",
                        "pip",
                        "install",
                        "-q",
                        "--user",
                        "--no-cache-dir",
                        "-r",
                        f"{ROOT}/requirements.txt",
                    ]
                )
                if code != 0:
                    raise SandboxUnavailable(f"bootstrapping the stack in {container.name} failed: {out[-1500:]!r}")
                for network in self._client.networks.list():
                    with contextlib.suppress(Exception):
                        network.disconnect(container, force=True)
            return container
        except SandboxUnavailable:
            raise
        except Exception as e:
            raise SandboxUnavailable(f"could not start a container from {self.options.image}: {e}") from e

    @staticmethod
    def _put(container: Any, files: dict[str, bytes]) -> None:
        if not container.put_archive(ROOT, remote.tar_bytes(files, gzip=False)):
            raise SandboxUnavailable(f"could not copy files into {container.name}")

    async def run(self, program: StepProgram, *, timeout: float, session: str | None = None) -> ExecResult:
        """Run one program in an idle container (see `Executor.run`)."""
        if self._closed:
            raise SandboxUnavailable("the docker executor is closed")
        container = await self._acquire()
        assert self._idle is not None
        try:
            return await asyncio.to_thread(self._run_in, container, program, timeout)
        except SandboxUnavailable:
            with contextlib.suppress(Exception):
                await asyncio.to_thread(container.remove, force=True)
            container = None
            raise
        finally:
            self._idle.put_nowait(container)

    def _run_in(self, container: Any, program: StepProgram, timeout: float) -> ExecResult:
        task = f"tasks/{uuid.uuid4().hex[:10]}"
        self._put(container, remote.program_file(program.source, task))
        req = remote.request(task, timeout, self.options, env=STACK_ENV)
        argv = ["timeout", "-k", "5", str(int(timeout) + 30), "python", "-m", "scicode.runtime.remote", req]
        try:
            code, output = container.exec_run(argv, workdir=ROOT, demux=False)
        except Exception as e:
            raise SandboxUnavailable(f"container {container.name} failed: {e}", during_program=True) from e
        text = (output or b"").decode("utf-8", errors="replace")
        reply = remote.read_reply(
            text, f"container {container.name} did not run the step (exit {code}): {text[-1500:]}"
        )
        return ExecResult.from_reply(reply, output_mb=self.options.output_mb, isolation=self.isolation)

"""The trusted side of `scicode.runtime.remote`, shared by the backends that run it (prime, docker).

Those backends copy the runtime and a program into a sandbox under `ROOT`, run
`python -m scicode.runtime.remote REQUEST` there, and read back one JSON line after `MARKER`.
This module builds what they send and reads what comes back; how the files get there and how the
command runs is each backend's business.
"""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any, Protocol

from scicode.errors import SandboxUnavailable
from scicode.execution.base import PROGRAM_ENV
from scicode.execution.payload import payload_files
from scicode.runtime.remote import MARKER

ROOT = "/scicode"
"""Where a sandbox keeps the runtime (`payload/`), the stack's requirements and task directories."""
DEFAULT_IMAGE = "python:3.11-slim"
"""A public image without the stack: the backend bootstraps it from `REQUIREMENTS`."""
REQUIREMENTS = Path(__file__).resolve().parent / "sandbox-requirements.txt"


class Limits(Protocol):
    """The limits a program runs under (every backend's options carry them)."""

    @property
    def memory_mb(self) -> int:
        """Address space of the program, MiB."""

    @property
    def output_mb(self) -> int:
        """Size of any file the program writes, MiB."""

    @property
    def max_processes(self) -> int:
        """Processes the program may run at once."""


def runtime_files(*, with_requirements: bool) -> dict[str, bytes]:
    """The runtime's files by path under `ROOT` (and the stack's pinned requirements)."""
    files = {f"payload/{name}": data for name, data in payload_files().items()}
    if with_requirements:
        files["requirements.txt"] = REQUIREMENTS.read_bytes()
    return files


def program_file(program_source: str, task_dir: str) -> dict[str, bytes]:
    """The program as a file of `task_dir` (a path under `ROOT`, relative to it)."""
    return {f"{task_dir}/program.py": program_source.encode("utf-8", "surrogateescape")}


def tar_bytes(files: dict[str, bytes], *, gzip: bool) -> bytes:
    """A tar archive of `files` (path -> content), readable by everyone, reproducible."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz" if gzip else "w") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(content), 0o644, 0
            tar.addfile(info, io.BytesIO(content))
    return buf.getvalue()


def request(task_dir: str, timeout: float, limits: Limits, env: dict[str, str] | None = None) -> str:
    """The runtime's command-line argument: run `task_dir`'s program under `limits`.

    `env` adds to the program's environment (PATH, LANG and `PROGRAM_ENV` are always set).
    """
    return json.dumps(
        {
            "dir": task_dir,
            "timeout": float(timeout),
            "memory_bytes": limits.memory_mb << 20,
            "output_bytes": limits.output_mb << 20,
            "max_processes": limits.max_processes,
            "env": {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8", **PROGRAM_ENV, **(env or {})},
        }
    )


def read_reply(output: str, failure: str) -> dict[str, Any]:
    """The runtime's reply from the command's output.

    Raises:
        SandboxUnavailable: no reply in `output` (the runtime never ran), with `failure` as message.
    """
    line = next((ln for ln in reversed(output.splitlines()) if ln.startswith(MARKER)), None)
    if line is None:
        raise SandboxUnavailable(failure)
    reply: dict[str, Any] = json.loads(line[len(MARKER) :])
    return reply

"""The executor contract, for every backend and local isolation level available here.

Each case runs real programs: exit codes, output capture, timeouts that kill every descendant,
limits, no network, and concurrent tasks that must not see each other.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

from scicode.codec import FrameReader
from scicode.execution import ExecutorOptions, StepProgram, make_executor
from scicode.execution.isolation import probe

LEVELS = [
    name
    for name in ("bwrap", "unshare", "none")
    if name in probe(os.environ.get("SCICODE_SANDBOX_PYTHON") or __import__("sys").executable)
]
CONFIGS = [(level, mode) for level in LEVELS for mode in ("warm", "fresh")]
#: Known gaps, documented in the README's isolation table: the weakest level has no namespaces.
KNOWN_FAILURES = {("none", "network")}


@pytest.fixture(scope="module", params=CONFIGS, ids=[f"{lv}-{m}" for lv, m in CONFIGS])
async def ex(request):
    level, mode = request.param
    executor = make_executor(
        "local",
        ExecutorOptions(concurrency=2, memory_mb=1024, output_mb=8, extra={"isolation": level, "worker_mode": mode}),
    )
    executor.level = level  # type: ignore[attr-defined]
    yield executor
    await executor.aclose()


def program(source: str) -> StepProgram:
    return StepProgram(step_id="t", source=source)


def events(result) -> list[str]:
    return [h["ev"] for h, _ in FrameReader(result.probe, max_bytes=1 << 30).frames()]


async def test_clean_run(ex) -> None:
    r = await ex.run(program("print('hello')\nimport sys\nprint('oops', file=sys.stderr)\n"), timeout=30)
    assert r.returncode == 0 and not r.timed_out and r.signal is None
    assert r.stdout == "hello\n" and "oops" in r.stderr
    assert events(r) == ["start", "done"]
    assert r.isolation.startswith(ex.level)


async def test_exit_codes_and_exceptions(ex) -> None:
    r = await ex.run(program("import sys\nsys.exit(3)\n"), timeout=30)
    assert r.returncode == 3 and events(r)[-1] == "exit"
    r = await ex.run(program("raise ValueError('bad')\n"), timeout=30)
    assert r.returncode == 1 and events(r)[-1] == "exception"
    r = await ex.run(program("import os\nos._exit(0)\n"), timeout=30)
    assert r.returncode == 0 and "done" not in events(r)


async def test_non_utf8_output_and_source(ex) -> None:
    r = await ex.run(program("import sys\nsys.stdout.buffer.write(b'\\xff\\xfe ok\\n')\ns = 'é'\n"), timeout=30)
    assert r.returncode == 0 and "ok" in r.stdout


async def test_large_stdout_is_capped(ex) -> None:
    r = await ex.run(program("import sys\nfor _ in range(200):\n    sys.stdout.write('x' * 100_000)\n"), timeout=60)
    assert r.output_exceeded
    assert len(r.stdout) <= 32 * 1024


async def test_timeout_kills_every_descendant(ex) -> None:
    tag = uuid.uuid4().hex
    source = (
        "import os, subprocess, time\n"
        f"subprocess.Popen(['sleep', '1000.{tag[:6]}'], start_new_session=True)\n"
        "if os.fork() == 0:\n    os.setsid()\n    time.sleep(1000)\n"
        "time.sleep(1000)\n"
    )
    r = await ex.run(program(source), timeout=2)
    assert r.timed_out and 1.5 < r.seconds < 10
    await asyncio.sleep(0.5)
    survivors = [p for p in os.listdir("/proc") if p.isdigit() and _cmdline(p).find(tag[:6]) >= 0]
    if (ex.level, "grandchild_survives") in KNOWN_FAILURES and survivors:
        pytest.xfail("no PID namespace at this level")
    assert survivors == []


def _cmdline(pid: str) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().decode(errors="replace")
    except OSError:
        return ""


async def test_memory_limit(ex) -> None:
    r = await ex.run(program("import numpy as np\na = np.ones(2_000_000_000)\n"), timeout=30)
    assert r.returncode != 0 and "MemoryError" in r.stderr + str(FrameReader(r.probe, max_bytes=1 << 30).frames())


async def test_no_network(ex) -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]
    try:
        source = f"import socket\ns = socket.create_connection(('127.0.0.1', {port}), timeout=3)\nprint('CONNECTED')\n"
        r = await ex.run(program(source), timeout=20)
    finally:
        server.close()
    if (ex.level, "network") in KNOWN_FAILURES and "CONNECTED" in r.stdout:
        pytest.xfail("no network namespace at this level")
    assert "CONNECTED" not in r.stdout


async def test_concurrent_tasks_do_not_mix(ex) -> None:
    tags = [uuid.uuid4().hex for _ in range(6)]
    progs = [
        program(
            f"import time\ntime.sleep(0.2)\nopen('mine.txt', 'w').write('{t}')\n"
            f"time.sleep(0.2)\nprint(open('mine.txt').read())\n"
        )
        for t in tags
    ]
    results = await asyncio.gather(*(ex.run(p, timeout=30) for p in progs))
    assert [r.stdout.strip() for r in results] == tags


async def test_environment_is_scrubbed(ex, monkeypatch) -> None:
    r = await ex.run(
        program(
            "import os\nprint(sorted(k for k in os.environ if 'KEY' in k or 'TOKEN' in k))\n"
            "print(os.environ.get('OPENBLAS_NUM_THREADS'))\n"
        ),
        timeout=30,
    )
    assert r.stdout.splitlines() == ["[]", "1"]

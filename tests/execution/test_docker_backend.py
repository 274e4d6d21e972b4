"""The docker backend: a missing engine is reported at once; containers are locked down.

Running containers needs a Docker engine (marked `docker`, skipped without one); the checks
below need none.
"""

from __future__ import annotations

import pytest

from scicode.errors import ConfigError
from scicode.execution import ExecutorOptions, make_executor
from scicode.execution.docker_backend import DockerOptions, container_spec


def _engine_running() -> bool:
    try:
        import docker

        docker.from_env().ping()
        return True
    except Exception:
        return False


@pytest.mark.skipif(_engine_running(), reason="a Docker engine is running here")
def test_missing_engine_is_reported_at_once(monkeypatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", "unix:///nonexistent/docker.sock")
    with pytest.raises(ConfigError, match=r"needs a running Docker engine.*sandbox='local'"):
        make_executor("docker", ExecutorOptions())


def test_containers_are_locked_down() -> None:
    options = DockerOptions.from_options(
        ExecutorOptions(memory_mb=2048, disk_mb=256, max_processes=100, extra={"image": "scicode-sandbox:0.1.0"})
    )
    spec = container_spec(options, "scicode-run-abc", 1)
    assert spec["network_mode"] == "none" and spec["read_only"] and spec["cap_drop"] == ["ALL"]
    assert "no-new-privileges" in spec["security_opt"] and spec["pids_limit"] == 164
    assert spec["labels"]["scicode.run"] == "scicode-run-abc" and spec["tmpfs"]["/scicode"].startswith("size=256m")
    plain = container_spec(DockerOptions.from_options(ExecutorOptions()), "r", 1)
    assert plain["network_mode"] == "bridge"  # bootstraps, then is disconnected from every network


@pytest.mark.docker
@pytest.mark.skipif(not _engine_running(), reason="needs a Docker engine")
async def test_runs_a_program_in_a_container() -> None:  # pragma: no cover - no engine in CI
    from scicode.execution import StepProgram

    async with make_executor("docker", ExecutorOptions(concurrency=1)) as ex:
        r = await ex.run(StepProgram("t", "print('hi')\n"), timeout=60)
    assert r.returncode == 0 and r.stdout == "hi\n"

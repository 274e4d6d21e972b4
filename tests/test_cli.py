"""The `scicode` command: help, a run, reports, and targets build / compare."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

pytestmark = pytest.mark.verifiers_api

SCICODE = [sys.executable, "-m", "scicode"]


def run(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [*SCICODE, *args], capture_output=True, text=True, cwd=cwd, timeout=1200, env=dict(os.environ)
    )
    if check:
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.mark.parametrize("command", [[], ["run"], ["check"], ["report"], ["targets"], ["targets", "compare"]])
def test_help(command) -> None:
    out = run(*command, "--help").stdout
    assert "usage: scicode" in out


def test_run_and_report(tmp_path) -> None:
    out = run("run", "--policy", "dummy", "--problems", "1", "3", "-o", str(tmp_path)).stdout
    assert "problem   1 (validation): 0/1 steps  [1.1:no_code]" in out
    assert "0.00/2" in out and "step outcomes: no_code=2" in out
    results = next(tmp_path.rglob("results.json"))
    data = json.loads(results.read_text())
    assert data["schema_version"] == 1 and data["executor"]["sandbox"] == "local"
    assert [s["kind"] for r in data["rollouts"] for s in r["steps"]] == ["no_code", "no_code"]
    report = run("report", str(results)).stdout
    assert "validation" in report and "0.00/2" in report


def test_errors_speak_to_the_user(tmp_path) -> None:
    missing = json.dumps({"h5py_file": str(tmp_path / "missing.h5")})
    proc = run("run", "--policy", "dummy", "--split", "test", "-a", missing, check=False)
    assert proc.returncode == 2 and "scicode: error:" in proc.stderr and "test_data.h5" in proc.stderr
    proc = run("run", "--split", "test", check=False)  # gold code exists only for validation
    assert proc.returncode == 2 and "use split='validation'" in proc.stderr


def test_targets_build_and_compare(tmp_path) -> None:
    merged = tmp_path / "validation.h5"
    run("targets", "build", "-o", str(merged))
    with h5py.File(merged, "r") as f:
        assert len(f.keys()) == 50 and "78.3" in f
    assert "50 of 50 validation steps agree" in run("targets", "compare", str(merged)).stdout
    with h5py.File(merged, "a") as f:
        data = f["10.2/test1/var1"][()]
        del f["10.2/test1/var1"]
        f["10.2/test1/var1"] = data + 1e-3
    proc = run("targets", "compare", str(merged), check=False)
    assert proc.returncode == 1
    assert "10.2[0]: values differ" in proc.stdout and "49 of 50 validation steps agree; 1 differ" in proc.stdout

"""Fetching the official targets file: resume, checksum, offline errors (against a local server)."""

from __future__ import annotations

import hashlib
import os

import pytest

from scicode.download import fetch
from scicode.errors import TargetsError
from scicode.target_sources import resolve_targets
from tests.fakes.file_server import FileServer

DATA = os.urandom(3_000_000)
SHA = hashlib.sha256(DATA).hexdigest()


def test_interrupted_download_resumes_with_a_range_request(tmp_path) -> None:
    with FileServer(DATA, drop_after=1_000_000, drops=2) as server:
        path = fetch(tmp_path / "t.h5", url=server.url, sha256=SHA, size=len(DATA), progress=False)
    assert path.read_bytes() == DATA
    assert server.ranges[0] is None and server.ranges[1].startswith("bytes=1") and len(server.ranges) == 3
    assert not (tmp_path / "t.h5.part").exists()
    assert (tmp_path / "t.h5.sha256").read_text().startswith(SHA)


def test_wrong_checksum_is_deleted_and_reported(tmp_path) -> None:
    with FileServer(DATA) as server, pytest.raises(TargetsError, match="sha256"):
        fetch(tmp_path / "t.h5", url=server.url, sha256="0" * 64, size=len(DATA), progress=False)
    assert not (tmp_path / "t.h5").exists() and not (tmp_path / "t.h5.part").exists()


def test_a_web_page_instead_of_the_file_is_explained(tmp_path) -> None:
    with FileServer(b"<html>quota</html>", html=True) as server, pytest.raises(TargetsError, match="web page"):
        fetch(tmp_path / "t.h5", url=server.url, sha256=SHA, size=None, progress=False)


def test_offline_auto_targets_fail_with_url_and_manual_step(tmp_path, monkeypatch, all_problems) -> None:
    monkeypatch.setenv("SCICODE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SCICODE_TARGETS_URL", "http://127.0.0.1:9/test_data.h5")
    test_problem = [p for p in all_problems if p.problem_id == "2"]
    with pytest.raises(TargetsError) as err:
        resolve_targets("auto", test_problem)
    message = str(err.value)
    assert "127.0.0.1:9" in message and "drive.google.com" in message and "h5py_file=" in message


def test_auto_downloads_into_the_cache_when_the_test_split_needs_it(tmp_path, monkeypatch, all_problems) -> None:
    import h5py

    from scicode.targets import write_step

    problem = next(p for p in all_problems if p.problem_id == "2")
    n_tests = len(problem.steps[0].test_cases)
    src = tmp_path / "src.h5"
    write_step(src, "2.1", [1.5] + [()] * (n_tests - 1))
    with h5py.File(src, "r"):
        pass
    data = src.read_bytes()
    monkeypatch.setenv("SCICODE_CACHE_DIR", str(tmp_path / "cache"))
    with FileServer(data) as server:
        monkeypatch.setenv("SCICODE_TARGETS_URL", server.url)
        import scicode.download as dl

        monkeypatch.setattr(
            dl,
            "fetch",
            lambda dest, **kw: fetch(
                dest, url=server.url, sha256=hashlib.sha256(data).hexdigest(), size=len(data), progress=False
            ),
        )
        service, hidden = resolve_targets("auto", [p for p in all_problems if p.problem_id == "2"])
    assert service.official is not None and service.official.has("2.1")
    assert service.load(next(p for p in all_problems if p.problem_id == "2").steps[0])[0] == 1.5
    assert str((tmp_path / "cache" / "test_data.h5").resolve()) in hidden

"""The HTML report renders its table, grid and chart in a real (headless) Chromium."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from scicode.report import RolloutRecord
from scicode.report_html import render


def records() -> list[RolloutRecord]:
    fail = {"step_id": "10.2", "passed": False, "kind": "wrong_answer", "detail": "test 1: assertion failed <&'>"}
    ok = {"step_id": "10.1", "passed": True, "kind": "passed", "detail": ""}
    return [
        RolloutRecord("10", "validation", (ok, fail)),
        RolloutRecord("10", "validation", (ok, {**fail, "passed": True, "kind": "passed", "detail": ""})),
        RolloutRecord(
            "1", "validation", ({"step_id": "1.1", "passed": False, "kind": "no_code", "detail": "no code"},)
        ),
        RolloutRecord(
            "1", "validation", ({"step_id": "1.1", "passed": False, "kind": "no_code", "detail": "no code"},)
        ),
    ]


def test_html_is_self_contained_and_escaped() -> None:
    page = render(records(), title="t")
    assert "<script" not in page and "http" not in page.replace("http://www.w3.org/2000/svg", "")
    assert "&lt;&amp;&#x27;&gt;" in page  # failure details are escaped
    assert len(re.findall(r"class='cell' data-step", page)) == 3
    assert "main@2" in page  # two rollouts per problem: pass@k rows


def _chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


@pytest.mark.skipif(_chromium() is None, reason="no Chromium on this machine (CI installs Debian's chromium)")
def test_report_renders_in_headless_chromium(tmp_path) -> None:
    path = tmp_path / "report.html"
    path.write_text(render(records(), title="SciCode test run"), encoding="utf-8")
    cmd = [
        _chromium(),
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
        "--dump-dom",
        path.as_uri(),
    ]
    dom = subprocess.run(cmd, capture_output=True, text=True, timeout=120).stdout
    assert "<title>SciCode test run</title>" in dom
    cells = re.findall(r'<span class="cell" data-step="([^"]+)" data-kind="([^"]+)"', dom)
    assert sorted(cells) == [("1.1", "no_code"), ("10.1", "passed"), ("10.2", "passed")] or sorted(cells) == [
        ("1.1", "no_code"),
        ("10.1", "passed"),
        ("10.2", "wrong_answer"),
    ]
    assert re.search(r'<table class="summary" id="summary">', dom)
    assert re.findall(r'<rect class="bar" data-kind="(\w+)"', dom)
    png = tmp_path / "shot.png"
    subprocess.run(
        [*cmd[:-2], f"--screenshot={png}", "--window-size=900,700", path.as_uri()], capture_output=True, timeout=120
    )
    assert png.is_file() and png.stat().st_size > 5000

"""environment.toml is the single source: the signature, the rubric and the README agree with it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

from scicode import config
from scicode.env import load_environment
from scicode.rubric import SciCodeRubric

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert match, f"README has no {name} section"
    return match.group(1).strip()


def test_readme_tables_are_generated_from_the_manifest() -> None:
    assert _section("args-table") == config.args_table(), "regenerate with scicode.config.args_table()"
    assert _section("metrics-table") == config.metrics_table()


def test_load_environment_signature_matches_the_manifest() -> None:
    params = {n: p for n, p in inspect.signature(load_environment).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert list(params) == list(config.arg_specs())
    for name, spec in config.arg_specs().items():
        default = params[name].default
        if default in (None, ()):
            default = []
        assert default == spec["default"], name


def test_rubric_reports_every_manifest_metric() -> None:
    names = [f.__name__ for f in SciCodeRubric().funcs]
    assert names == list(config.manifest()["metrics"])


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    main, tests = blocks[0].strip(), blocks[1].strip()
    assert main.endswith("scicode run") and "pip install ." in main
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]" && python -m pytest -q' in ci

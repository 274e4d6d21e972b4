"""environment.toml is the single source: the signature, the rubric and the README agree with it."""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from scicode import config
from scicode.api import is_v1

pytestmark = pytest.mark.verifiers_api

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _section(name: str) -> str:
    match = re.search(rf"<!-- {name}:start -->\n(.*?)\n<!-- {name}:end -->", README, re.S)
    assert match, f"README has no {name} section"
    return match.group(1).strip()


def test_readme_tables_are_generated_from_the_manifest() -> None:
    assert _section("args-table") == config.args_table(), "regenerate with scicode.config.args_table()"
    assert _section("metrics-table") == config.metrics_table()


@pytest.mark.skipif(is_v1(), reason="the classic verifiers API (0.3.x)")
def test_load_environment_signature_matches_the_manifest() -> None:
    from scicode.env import load_environment

    params = {n: p for n, p in inspect.signature(load_environment).parameters.items() if p.kind is p.KEYWORD_ONLY}
    assert list(params) == list(config.arg_specs())
    for name, spec in config.arg_specs().items():
        default = params[name].default
        if default in (None, ()):
            default = []
        assert default == spec["default"], name


@pytest.mark.skipif(is_v1(), reason="the classic verifiers API (0.3.x)")
def test_rubric_reports_every_manifest_metric() -> None:
    from scicode.rubric import SciCodeRubric

    names = [f.__name__ for f in SciCodeRubric().funcs]
    assert names == list(config.manifest()["metrics"])


@pytest.mark.skipif(not is_v1(), reason="the v1 verifiers API (0.4+)")
def test_v1_taskset_config_matches_the_manifest() -> None:
    from scicode.v1 import SciCodeConfig

    ours = {n: f for n, f in SciCodeConfig.model_fields.items() if n in config.arg_specs() and n != "system_prompt"}
    # system_prompt is verifiers' own taskset field (a file path), documented as such.
    assert list(ours) == [n for n in config.arg_specs() if n != "system_prompt"]
    for name, field in ours.items():
        assert field.default == config.arg_specs()[name]["default"], name


@pytest.mark.skipif(not is_v1(), reason="the v1 verifiers API (0.4+)")
def test_v1_task_reports_every_manifest_metric() -> None:
    from scicode import scores
    from scicode.v1 import SciCodeTask
    from scicode.verdict import FAILURE_KINDS

    rewards = [n for n in ("subproblem_score", "main_problem_score") if hasattr(SciCodeTask, n)]
    metric_names = list(scores.metrics([], [str(k) for k in FAILURE_KINDS]))
    assert [*rewards, *metric_names] == list(config.manifest()["metrics"])


def test_readme_gives_the_two_commands_and_ci_runs_the_test_one() -> None:
    blocks = re.findall(r"```bash\n(.*?)\n```", README, re.S)
    main, tests = blocks[0].strip(), blocks[1].strip()
    assert main.endswith("scicode run") and "pip install ." in main
    assert tests.endswith("python -m pytest")
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -q -e ".[test]" && python -m pytest -q' in ci

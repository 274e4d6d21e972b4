"""The environment end to end, under whichever verifiers API is installed (0.3 classic or 0.4 v1):
the turn loop, given steps, reference policies, load-time errors, and vf-eval itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from scicode.api import is_v1
from scicode.errors import ConfigError, TargetsError
from scicode.policies import DummyPolicy, GoldPolicy
from scicode.policy_server import API_KEY_VAR, PolicyServer
from scicode.runner import run_policy

pytestmark = pytest.mark.verifiers_api

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def empty_official_file(tmp_path) -> Path:
    """An official-layout file with no targets: enough to load the test split when nothing is judged."""
    path = tmp_path / "test_data.h5"
    h5py.File(path, "w").close()
    return path


def load(env_args: dict) -> object:
    """Load the environment (and its tasks) the way vf-eval does under the installed API."""
    if not is_v1():
        from scicode.env import load_environment

        return load_environment(**env_args)
    import verifiers.v1 as vf

    env = vf.load_environment(vf.resolve_env_config({"taskset": {"id": "scicode", **env_args}}))
    return list(env.taskset)


async def test_gold_policy_multi_step_problem(validation) -> None:
    result = await run_policy(
        GoldPolicy([validation["29"]]), {"split": "validation", "problems": ["29"], "dataset_source": "bundled"}
    )
    (out,) = result.outcomes
    assert out.reward == 1.0 and out.error is None
    assert [s["step_id"] for s in out.steps] == ["29.1", "29.2", "29.3"] and all(s["passed"] for s in out.steps)
    assert {s["problem_id"] for s in out.steps} == {"29"} and all(s["code"] for s in out.steps)
    # Each turn is one fresh prompt holding every earlier step's code as parsed from the replies.
    prompts, p = result.prompts, validation["29"]
    assert len(prompts) == 3
    assert p.steps[0].gold_code.strip() in prompts[1]
    assert p.steps[0].gold_code.strip() in prompts[2] and p.steps[1].gold_code.strip() in prompts[2]
    assert p.steps[2].function_header in prompts[2]


async def test_dummy_policy_scores_zero_with_no_code() -> None:
    result = await run_policy(
        DummyPolicy(), {"split": "validation", "problems": ["1", "29"], "dataset_source": "bundled"}
    )
    assert sorted(o.reward for o in result.outcomes) == [0.0, 0.0]
    assert {s["kind"] for o in result.outcomes for s in o.steps} == {"no_code"}
    assert sum(len(o.steps) for o in result.outcomes) == 4 and all(o.error is None for o in result.outcomes)


async def test_given_steps_are_injected_never_asked(empty_official_file) -> None:
    env_args = {
        "split": "test",
        "problems": ["62", "76"],
        "dataset_source": "bundled",
        "h5py_file": str(empty_official_file),
    }
    result = await run_policy(DummyPolicy(), env_args)
    asked = [s["step_id"] for o in result.outcomes for s in o.steps]
    assert "62.1" not in asked and "76.3" not in asked
    assert len(result.prompts) == len(asked) == 5 + 3  # 62.2-62.6 and 76.1, 76.2, 76.4
    text = "\n".join(result.prompts)
    assert "class Block:" in text and "class EnlargedBlock:" in text
    prompt_764 = next(p for p in result.prompts if "def scan_sequence" in p.split("NEXT STEP")[-1])
    assert "def generate_dna(N: int, PWM: dict) -> tuple:" in prompt_764


def test_test_split_without_targets_fails_at_load_with_instructions(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCICODE_CACHE_DIR", str(tmp_path))
    monkeypatch.setenv("SCICODE_TARGETS_URL", "http://127.0.0.1:9/test_data.h5")
    with pytest.raises(TargetsError) as err:
        load({"split": "test", "dataset_source": "bundled"})
    message = str(err.value)
    assert "test_data.h5" in message and "h5py_file=" in message and "split='validation'" in message
    with pytest.raises(TargetsError, match="No file at"):
        load({"split": "validation", "dataset_source": "bundled", "h5py_file": str(tmp_path / "nope.h5")})


def test_bad_env_args_are_refused() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        load({"split": "validation", "sandbox": "cloud"})
    with pytest.raises(ConfigError):
        load({"split": "validation", "timeout_per_test": 0})


def test_gold_policy_refuses_the_test_split(all_problems) -> None:
    with pytest.raises(ConfigError, match="ground-truth"):
        GoldPolicy([p for p in all_problems if p.problem_id == "2"])


def _vf_eval(tmp_path: Path, server: PolicyServer, env_args: dict) -> list[str]:
    vf_eval = str(Path(sys.executable).parent / "vf-eval")
    if is_v1():
        flags = [
            "--client.base-url",
            server.url,
            "--client.api-key-var",
            API_KEY_VAR,
            "--no-push",
            "--no-rich",
            "-o",
            str(tmp_path / "out"),
        ]
        for key, value in env_args.items():
            flag = f"--env.taskset.{key.replace('_', '-')}"
            flags += [flag, *value] if isinstance(value, list) else [flag, str(value)]
        return [vf_eval, "scicode", "-m", "gold", *flags]
    return [
        vf_eval,
        "scicode",
        "-m",
        "gold",
        "-b",
        server.url,
        "-k",
        API_KEY_VAR,
        "-n",
        "-1",
        "-r",
        "1",
        "-a",
        json.dumps(env_args),
        "-s",
        "-d",
        "-o",
        str(tmp_path / "out"),
    ]


def test_vf_eval_runs_against_an_openai_compatible_server(tmp_path, validation, empty_official_file) -> None:
    """`vf-eval scicode` end to end, through the real client and CLI of the installed verifiers: a
    validation problem answered with gold code and a test-split problem answered with nothing."""
    gold = GoldPolicy([validation["29"]])

    def reply(prompt: str) -> str:
        answer = gold.reply(prompt)
        return "```python\n```" if "I do not recognise" in answer else answer

    from scicode.policy_server import last_user_text

    env_args = {
        "split": "all",
        "problems": ["29", "76"],
        "dataset_source": "bundled",
        "h5py_file": str(empty_official_file),
    }
    with PolicyServer(lambda messages: reply(last_user_text(messages))) as server:
        env = dict(os.environ, **{API_KEY_VAR: "sk-test"}, PYTHONPATH=str(ROOT))
        proc = subprocess.run(
            _vf_eval(tmp_path, server, env_args), capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path
        )
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        prompts = server.user_prompts()
    from scicode.report import load_run

    rows = {r.problem_id: r for r in load_run(tmp_path / "out")}
    assert set(rows) == {"29", "76"}
    assert rows["29"].passed == rows["29"].total == 3
    assert rows["76"].passed == 0 and {s["kind"] for s in rows["76"].steps} == {"no_code"}
    # Turn 2+ prompts carry the earlier steps' code and the given step's gold code.
    p29 = validation["29"]
    turn3 = next(p for p in prompts if p29.steps[2].function_header in p.split("NEXT STEP")[-1])
    assert p29.steps[0].gold_code.strip() in turn3 and p29.steps[1].gold_code.strip() in turn3
    turn_764 = next(p for p in prompts if "def scan_sequence" in p.split("NEXT STEP")[-1])
    assert "def generate_dna(N: int, PWM: dict) -> tuple:" in turn_764

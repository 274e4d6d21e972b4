"""The environment end to end: the turn loop, given steps, reference policies, and vf-eval."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from scicode.env import load_environment
from scicode.errors import ConfigError, TargetsError
from scicode.policies import DummyPolicy, GoldPolicy, ReferencePolicy
from tests.fakes.openai_server import FakeOpenAI


class Recording(ReferencePolicy):
    """Answers like another policy and keeps every prompt it was shown."""

    def __init__(self, inner: ReferencePolicy) -> None:
        super().__init__("recording")
        self.inner, self.prompts = inner, []

    def reply(self, prompt_text: str) -> str:
        self.prompts.append(prompt_text)
        return self.inner.reply(prompt_text)


@pytest.fixture
def empty_official_file(tmp_path) -> Path:
    """An official-layout file with no targets: enough to load the test split when nothing is judged."""
    path = tmp_path / "test_data.h5"
    h5py.File(path, "w").close()
    return path


async def evaluate(env, policy, **kwargs):
    try:
        out = await env.evaluate(client=policy, model=policy.name, state_columns=["scicode"], **kwargs)
    finally:
        await env.scorer.executor.aclose()
    return out["outputs"]


async def test_gold_policy_multi_step_problem(validation) -> None:
    env = load_environment(split="validation", problems=["29"], dataset_source="bundled")
    policy = Recording(GoldPolicy(list(env.problems.values())))
    (out,) = await evaluate(env, policy)
    assert out["reward"] == 1.0
    assert out["metrics"]["main_problem_score"] == 1.0 and out["metrics"]["steps_total"] == 3.0
    steps = out["scicode"]["steps"]
    assert [s["step_id"] for s in steps] == ["29.1", "29.2", "29.3"] and all(s["passed"] for s in steps)
    # Each turn is one fresh prompt holding every earlier step's code as parsed from the replies.
    assert len(policy.prompts) == 3
    p = validation["29"]
    assert p.steps[0].gold_code.strip() in policy.prompts[1]
    assert p.steps[0].gold_code.strip() in policy.prompts[2] and p.steps[1].gold_code.strip() in policy.prompts[2]
    assert p.steps[2].function_header in policy.prompts[2]
    # The transcript interleaves every turn.
    roles = [m["role"] if isinstance(m, dict) else m.role for m in out["completion"]]
    assert roles == ["assistant", "user", "assistant", "user", "assistant"]


async def test_dummy_policy_scores_zero_with_no_code() -> None:
    env = load_environment(split="validation", problems=["1", "29"], dataset_source="bundled")
    outs = await evaluate(env, DummyPolicy())
    assert [o["reward"] for o in outs] == [0.0, 0.0]
    kinds = {s["kind"] for o in outs for s in o["scicode"]["steps"]}
    assert kinds == {"no_code"}
    assert sum(o["metrics"]["no_code"] for o in outs) == 4.0
    assert all(o.get("error") is None for o in outs)


async def test_given_steps_are_injected_never_asked(all_problems, empty_official_file) -> None:
    env = load_environment(
        split="test", problems=["62", "76"], dataset_source="bundled", h5py_file=str(empty_official_file)
    )
    policy = Recording(DummyPolicy())
    outs = await evaluate(env, policy)
    prompts = {o["scicode"]["problem_id"]: o for o in outs}
    asked = [s["step_id"] for o in outs for s in o["scicode"]["steps"]]
    assert "62.1" not in asked and "76.3" not in asked
    assert len(policy.prompts) == len(asked) == 5 + 3  # 62.2-62.6 and 76.1, 76.2, 76.4
    text = "\n".join(policy.prompts)
    assert "class Block:" in text and "class EnlargedBlock:" in text
    prompt_764 = next(p for p in policy.prompts if "def scan_sequence" in p.split("NEXT STEP")[-1])
    assert "def generate_dna(N: int, PWM: dict) -> tuple:" in prompt_764
    assert set(prompts) == {"62", "76"}


def test_test_split_without_targets_fails_at_load_with_instructions(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("SCICODE_CACHE_DIR", str(tmp_path))
    with pytest.raises(TargetsError) as err:
        load_environment(split="test", dataset_source="bundled")
    message = str(err.value)
    assert "test_data.h5" in message and "h5py_file=" in message and "split='validation'" in message
    with pytest.raises(TargetsError, match="No file at"):
        load_environment(split="validation", dataset_source="bundled", h5py_file=str(tmp_path / "nope.h5"))


def test_bad_env_args_are_refused() -> None:
    with pytest.raises(ConfigError, match="choose one of"):
        load_environment(split="validation", sandbox="cloud")
    with pytest.raises(ConfigError):
        load_environment(split="validation", timeout_per_test=0)


def test_gold_policy_refuses_the_test_split(all_problems) -> None:
    with pytest.raises(ConfigError, match="ground-truth"):
        GoldPolicy([p for p in all_problems if p.problem_id == "2"])


def test_vf_eval_runs_against_an_openai_compatible_server(tmp_path, validation, empty_official_file) -> None:
    """`vf-eval scicode` end to end: a validation problem answered with gold code, and a test-split
    problem answered with nothing, through the real client, CLI and results files."""
    problems = [validation["29"]]
    gold = GoldPolicy(problems)

    def reply(messages):
        prompt = messages[-1]["content"]
        return gold.reply(prompt) if "I do not recognise" not in gold.reply(prompt) else "```python\n```"

    env_args = {
        "split": "all",
        "problems": ["29", "76"],
        "dataset_source": "bundled",
        "h5py_file": str(empty_official_file),
    }
    with FakeOpenAI(reply) as server:
        cmd = [
            str(Path(sys.executable).parent / "vf-eval"),
            "scicode",
            "-m",
            "fake-model",
            "-b",
            server.url,
            "-k",
            "FAKE_KEY",
            "-n",
            "2",
            "-r",
            "1",
            "-a",
            json.dumps(env_args),
            "-s",
            "-d",
            "-C",
            "scicode",
            "-o",
            str(tmp_path / "out"),
        ]
        env = dict(os.environ, FAKE_KEY="sk-test", PYTHONPATH=str(Path(__file__).resolve().parents[1]))
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
        prompts = server.user_prompts()
    results = list((tmp_path / "out").rglob("results.jsonl"))
    assert results, f"no results.jsonl under {tmp_path / 'out'}: {proc.stdout[-2000:]}"
    rows = {json.loads(line)["scicode"]["problem_id"]: json.loads(line) for line in results[0].read_text().splitlines()}
    assert rows["29"]["reward"] == 1.0
    assert rows["76"]["reward"] == 0.0 and {s["kind"] for s in rows["76"]["scicode"]["steps"]} == {"no_code"}
    # Turn 2+ prompts carry the earlier steps' code and the given step's gold code.
    p29 = validation["29"]
    turn3 = next(p for p in prompts if p29.steps[2].function_header in p.split("NEXT STEP")[-1])
    assert p29.steps[0].gold_code.strip() in turn3 and p29.steps[1].gold_code.strip() in turn3
    turn_764 = next(p for p in prompts if "def scan_sequence" in p.split("NEXT STEP")[-1])
    assert "def generate_dna(N: int, PWM: dict) -> tuple:" in turn_764
